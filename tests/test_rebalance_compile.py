"""Compilation contract of the rebalance pipeline: programs depend on layer shapes only.

* After its first call, `rebalance_network` (and `rebalance_layer`) compiles nothing for new
  masks of the same layer shapes and configuration (n_pe, mapping, policy, target), whatever the
  masks' moves: counted with the `jax.monitoring` event of every XLA backend compilation.
* The selection those programs run is exactly the loop oracle's, for any row-class layout
  (hypothesis, with the module constants that shape the classes patched).
* A process that loops over many configurations keeps a bounded number of memory mappings and a
  bounded resident size: only the last few configurations' programs stay compiled (slow, in a
  subprocess).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import oracle
from uticket_jax import workload
from uticket_jax.workload import mappings as mp
from uticket_jax.workload import rebalance_layer, rebalance_network, synthetic
from uticket_jax.workload import selection as sel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAPPINGS = list(mp.MAPPINGS)
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"  # jax/_src/dispatch.py


class CompileCounter:
    """Counts XLA backend compilations (the `jax.monitoring` event of every new program)."""

    def __init__(self):
        self.names: list[str] = []

    @property
    def count(self) -> int:
        return len(self.names)

    def __call__(self, event, duration, **kwargs):
        del duration
        if event == BACKEND_COMPILE:
            self.names.append(str(kwargs.get("fun_name")))

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self)


# conv2 and conv3 share a shape (and so their programs); conv0 and the classifier pass through.
_SMALL_NET = {
    "features/conv0/kernel": (3, 3, 3, 8),
    "features/conv1/kernel": (3, 3, 8, 16),
    "features/conv2/kernel": (3, 3, 16, 16),
    "features/conv3/kernel": (3, 3, 16, 16),
    "features/conv4/kernel": (3, 3, 16, 12),
    "classifier/kernel": (12, 10),
}


def _net_round(rng, density):
    """Masks of about `density` (uneven per channel, as a pruned net) and fresh weights."""
    masks, weights = {}, {}
    for k, s in _SMALL_NET.items():
        masks[k], weights[k] = synthetic.uneven_sparse_layer(rng, s, density, 0.8)
    return masks, weights


def _prio(policy, weights, key, i, shape):
    if policy == "magnitude":
        return np.abs(weights)
    return np.asarray(workload.random_priorities(jax.random.fold_in(key, i), shape))


@pytest.mark.parametrize("target", workload.TARGETS)
@pytest.mark.parametrize("policy", workload.POLICIES)
@pytest.mark.parametrize("mapping", MAPPINGS)
def test_rounds_compile_nothing(mapping, policy, target):
    # Round 0 moves nothing (all-false masks: every load is 0), so its selections are skipped at
    # run time; they still compile. Rounds 1-4 (LTH-like, decreasing density; new masks, weights
    # and key each round) then compile nothing at all, and match the loop oracle.
    rng = np.random.default_rng(7)
    kw = dict(n_pe=4, mapping=mapping, policy=policy, target=target)
    keys = [jax.random.key(r) for r in range(5)]  # made outside the counted calls
    _, weights = _net_round(rng, 0.5)
    zero = {k: np.zeros(s, bool) for k, s in _SMALL_NET.items()}
    new, rep = rebalance_network(zero, weights, key=keys[0], **kw)
    assert all(np.array_equal(new[k], zero[k]) for k in zero)
    assert sum(int(r.regrown) + int(r.dropped) for r in rep.layers) == 0
    for r, density in enumerate((0.5, 0.25, 0.1, 0.03), 1):
        masks, weights = _net_round(rng, density)
        with CompileCounter() as counter:
            new, rep = rebalance_network(masks, weights, key=keys[r], **kw)
            jax.block_until_ready((new, rep.layers, rep.before, rep.after))
        assert counter.count == 0, (r, counter.names)
        moved = 0
        for i, (k, a) in enumerate(zip(rep.names, rep.analysed, strict=True)):
            if not a:
                np.testing.assert_array_equal(new[k], masks[k])
                continue
            prio = _prio(policy, weights[k], keys[r], i, masks[k].shape)
            want = oracle.rebalance(masks[k], prio, 4, mapping, target)[0]
            np.testing.assert_array_equal(new[k], want, err_msg=f"round {r}, {k}")
            moved += int((want != masks[k]).sum())
        assert moved > 0


def test_layer_compiles_nothing_for_new_masks():
    # rebalance_layer: a new mask of the same shape compiles nothing, whatever its moves.
    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    rebalance_layer(rng.random(w.shape) < 0.3, w, n_pe=4)
    for density in (0.9, 0.05):
        mask = rng.random(w.shape) < density
        with CompileCounter() as counter:
            new, rep = rebalance_layer(mask, w * 2.0, n_pe=4)
            jax.block_until_ready((new, rep))
        assert counter.count == 0, counter.names
        want = oracle.rebalance(mask, np.abs(w), 4, "output_channel", "ceil_mean")[0]
        np.testing.assert_array_equal(new, want)


def _apply(mask, prio, delta, *, m, n_pe):
    """`selection.apply_layer` in a fresh jit (so patched module constants are traced anew)."""
    fn = jax.jit(lambda x, p, d: sel.apply_layer(x, p, d, m=m, n_pe=n_pe))
    return fn(jnp.asarray(mask), jnp.asarray(prio), jnp.asarray(delta))


@settings(max_examples=12, deadline=None)
@given(
    dims=st.sampled_from([(3, 3, 5, 7), (3, 3, 16, 12), (2, 2, 40, 6), (9, 12), (70, 3)]),
    n=st.integers(1, 9),
    p=st.sampled_from([0.03, 0.3, 0.8]),
    mapping=st.sampled_from(MAPPINGS),
    target=st.sampled_from(workload.TARGETS),
    prio_kind=st.sampled_from(["normal", "rounded", "equal", "random"]),
    tile=st.sampled_from([64, 1 << 15]),
    rows=st.sampled_from([(), (8,), (8, 64, 512)]),
    onehot=st.sampled_from([0, 8]),
    seed=st.integers(0, 2**16),
)
def test_selection_matches_oracle(dims, n, p, mapping, target, prio_kind, tile, rows, onehot, seed):
    # Any row-class layout selects exactly the oracle's slots: many loop steps per class with
    # padding columns (`_TILE` 64: 8 columns a step), only the direct class (`_ROWS` empty),
    # compaction by gathers (`_ONEHOT_W` 0), masses of equal priorities (ties to the lower index).
    rng = np.random.default_rng(seed)
    mask = rng.random(dims) < p
    prio = {
        "normal": lambda: np.abs(rng.standard_normal(dims)),
        "rounded": lambda: np.round(np.abs(rng.standard_normal(dims))),
        "equal": lambda: np.ones(dims),
        "random": lambda: np.asarray(workload.random_priorities(jax.random.key(seed), dims)),
    }[prio_kind]().astype(np.float32)
    want, loads, tgt = oracle.rebalance(mask, prio, n, mapping, target)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sel, "_TILE", tile)
        patch.setattr(sel, "_ROWS", rows)
        patch.setattr(sel, "_ONEHOT_W", onehot)
        got = _apply(mask, prio, (tgt - loads).astype(np.int32), m=mp.get_mapping(mapping), n_pe=n)
    np.testing.assert_array_equal(got, want)


_MEMORY_LOOP = """
import gc, json, sys
import jax, numpy as np
from uticket_jax.workload import rebalance_network
rng = np.random.default_rng(0)
shapes = {"conv0": (3, 3, 2, 4), "conv1": (3, 3, 4, 8)}
masks = {k: rng.random(s) < 0.2 for k, s in shapes.items()}
weights = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
key = jax.random.key(0)
configs = [(n, m, p) for n in range(1, 14) for m in ("output_channel", "input_split")
           for p in ("magnitude", "random")][:20]

def stat():
    gc.collect()
    maps = sum(1 for _ in open("/proc/self/maps"))
    rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:"))
    return maps, rss / 1024

out = {0: stat()}
for i, (n, m, p) in enumerate(configs, 1):
    new, _ = rebalance_network(masks, weights, n_pe=n, mapping=m, policy=p, key=key)
    jax.block_until_ready(new)
    if i in (10, 20):
        out[i] = stat()
print(json.dumps(out))
"""


@pytest.mark.slow
def test_many_configurations_keep_memory_bounded():
    # 20 (n_pe, mapping, policy) configurations in one process, no jax.clear_caches(): the
    # programs of evicted configurations are released. Measured (2-core CPU): configs 0 -> 10 ->
    # 20 -> 30, 507 -> 2,069 -> 2,095 -> 2,032 maps and 206 -> 463 -> 472 -> 479 MB (the RSS
    # creeps with JAX's own bounded caches of traced jaxprs); earlier, with the eviction turned
    # off, 502 -> 3,385 -> 14,978 maps and 209 -> 477 -> 1,019 MB over 0 -> 10 -> 50 (~290 maps
    # and ~14 MB per configuration: 10 more configurations would add ~2,900 maps, far above the
    # bound here, 0.5 x the first ten's growth).
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_MEMORY_LOOP)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        timeout=900,
    )
    assert r.returncode == 0, r.stderr
    stats = {int(k): v for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}
    (maps0, rss0), (maps10, rss10), (maps20, rss20) = stats[0], stats[10], stats[20]
    assert maps10 - maps0 > 800  # the first ten configurations compiled their programs
    # After the cache fills, the rest of the loop grows by less than half the first ten's growth.
    assert maps20 - maps10 < 0.5 * (maps10 - maps0), stats
    assert rss20 - rss10 < 0.5 * (rss10 - rss0), stats
