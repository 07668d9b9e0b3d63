"""The simulator's numpy backend: equal to the jax backend and to the loop oracle, compiles
nothing, and is the default of experiments/sweep.py outside distributed runs."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_hardware import _check_against_oracle, random_horowitz45
from tests.test_mapping_registry import INTERLEAVED
from uticket_jax import hardware, workload
from uticket_jax.sparsity.masks import save_mask_file
from uticket_jax.workload import mappings as wm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "sweep.py")
INT_FIELDS = ("latency", "wasted", "dynamic")

# conv-conv-conv-dense; c_out 40 > 32 groups at n_pe 1 (XLA sums those means in another order).
SHAPES = {
    "features/conv0/kernel": (3, 3, 3, 8),
    "features/conv1/kernel": (3, 3, 8, 40),
    "features/conv2/kernel": (3, 3, 40, 16),
    "classifier/kernel": (16, 5),  # 8x8 input: pools after conv0, conv1 and conv2 leave 1x1
}


def _masks(seed: int, density: float = 0.3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.random(s) < density for k, s in SHAPES.items()}


def _leaves(res: hardware.SweepResult) -> dict[str, np.ndarray]:
    """Every array of a result by a readable name."""
    out = {}
    for part in ("layers", "network"):
        fig = getattr(res, part)
        for k in fig._fields:
            v = getattr(fig, k)
            if k == "counts":
                out.update({f"{part}.counts.{c}": np.asarray(x) for c, x in v._asdict().items()})
            elif k == "energy_terms":
                out.update({f"{part}.terms.{t}": np.asarray(x) for t, x in v.items()})
            else:
                out[f"{part}.{k}"] = np.asarray(v)
    return out


def assert_backends_agree(a: hardware.SweepResult, b: hardware.SweepResult) -> None:
    """Same structure, dtypes and shapes; load units exact, floats within rtol 1e-6 (NaN = NaN)."""
    assert a.energy_model == b.energy_model
    la, lb = _leaves(a), _leaves(b)
    assert list(la) == list(lb)
    for k, x in la.items():
        y = lb[k]
        assert x.dtype == y.dtype and x.shape == y.shape, (k, x.dtype, y.dtype, x.shape, y.shape)
        if k.rsplit(".", 1)[-1] in INT_FIELDS:
            np.testing.assert_array_equal(x, y, err_msg=k)
        else:
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=0, equal_nan=True, err_msg=k)


def _grid(activity: bool) -> hardware.HardwareConfig:
    """8 configs per mapping with n_pe <= 16: the jax programs `small_nets` examples reuse."""
    return hardware.config_grid(
        n_pe=[1, 3, 8, 13],
        mapping=list(hardware.MAPPINGS),
        timesteps=[4],
        clock_hz=[3e8, 7.7e8],
        activity_aware=[activity],
    )


@pytest.mark.parametrize("model", ["horowitz45", "sata"])
def test_numpy_backend_equals_jax_backend(model):
    masks = _masks(0)
    specs = hardware.specs_from_shapes({k: v.shape for k, v in masks.items()}, input_size=8)
    rates = np.asarray([1.0, 0.3, 0.05, 0.7], np.float32)
    for activity in (False, True):
        configs = _grid(activity)
        kw = {"spike_rates": rates, "energy_model": model}
        want = hardware.simulate_masks(masks, specs, configs, **kw)
        got = hardware.simulate_masks(masks, specs, configs, backend="numpy", **kw)
        assert_backends_agree(want, got)
        # The figures that are single products (no sums of products, no group means) are
        # bit-identical: loads, cycles, seconds, wasted PE-cycles, every count.
        for part in ("layers", "network"):
            w, g = getattr(want, part), getattr(got, part)
            for f in ("latency", "wasted", "dynamic", "cycles", "seconds", "wasted_pe_cycles"):
                np.testing.assert_array_equal(getattr(w, f), getattr(g, f), err_msg=f)
            jax.tree.map(np.testing.assert_array_equal, w.counts, g.counts)
        # dedupe does not change the numpy backend's figures either.
        again = hardware.simulate_masks(masks, specs, configs, backend="numpy", dedupe=False, **kw)
        jax.tree.map(np.testing.assert_array_equal, got, again)
        # Tables of either backend feed either simulator backend.
        tables = hardware.network_tables(masks, specs, backend="numpy")
        jax.tree.map(
            np.testing.assert_array_equal,
            got,
            hardware.simulate(tables, specs, configs, backend="numpy", **kw),
        )


def test_numpy_backend_matches_loop_oracle():
    rng = np.random.default_rng(3)
    masks = _masks(1, density=0.4)
    specs = hardware.specs_from_shapes({k: v.shape for k, v in masks.items()}, input_size=8)
    rates = rng.uniform(0, 1, len(specs)).astype(np.float32)
    configs = hardware.config_grid(
        n_pe=[1, 3, 7], mapping=list(hardware.MAPPINGS), activity_aware=[True, False]
    )
    for model in ("horowitz45", "sata"):
        _check_against_oracle(masks, specs, configs, rates, model=model, backend="numpy")


@st.composite
def small_nets(draw):
    """`SHAPES` with random masks, sizes, analysed layers, rates and 6 random configs.

    One layer structure, `n_pe <= 16` (one `n_cap`) and at most 8 configs per mapping (one
    padded batch), as in `_grid`: the jax side reuses `_grid`'s programs (one per mapping and
    energy model) while everything else varies.
    """
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    masks = {k: rng.random(s) < density for k, s in SHAPES.items()}
    sizes = [draw(st.integers(1, 6)) for _ in range(3)] + [1]
    specs = hardware.specs_from_shapes(
        SHAPES, out_sizes=sizes, skip_first=draw(st.booleans()), conv_only=draw(st.booleans())
    )
    cfgs = [
        hardware.make_config(
            n_pe=int(rng.integers(1, 17)),
            mapping=hardware.MAPPINGS[int(rng.integers(0, 2))],
            timesteps=int(rng.integers(1, 9)),
            clock_hz=float(rng.uniform(1e8, 2e9)),
            activity_aware=bool(rng.integers(0, 2)),
        )
        for _ in range(6)
    ]
    rates = rng.uniform(0, 1, size=len(SHAPES)).astype(np.float32)
    consts = random_horowitz45(rng, 6)
    return masks, specs, hardware.stack_configs(cfgs), rates, consts


@settings(max_examples=30, deadline=None)
@given(small_nets(), st.sampled_from(["horowitz45", "sata"]))
def test_backends_agree_on_random_networks(net, model):
    masks, specs, configs, rates, consts = net
    kw = {"spike_rates": rates, "energy_model": model}
    if model == "horowitz45":
        kw["energy_constants"] = consts
    want = hardware.simulate_masks(masks, specs, configs, **kw)
    got = hardware.simulate_masks(masks, specs, configs, backend="numpy", **kw)
    assert_backends_agree(want, got)


class _CompileCounter:
    """Counts XLA backend compilations (the `jax.monitoring` event of every new program)."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.count = 0

    def __call__(self, event, duration, **kwargs):
        del duration, kwargs
        self.count += event == self.EVENT

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self)


def test_numpy_backend_compiles_nothing():
    shapes = {"a/kernel": (3, 3, 5, 11), "b/kernel": (3, 3, 11, 6), "fc/kernel": (6, 3)}  # new
    rng = np.random.default_rng(5)
    masks = {k: rng.random(s) < 0.5 for k, s in shapes.items()}
    specs = hardware.specs_from_shapes(shapes, out_sizes=[4, 2, 1])
    configs = hardware.config_grid(n_pe=list(range(1, 20)), mapping=list(hardware.MAPPINGS))
    with _CompileCounter() as c:
        for model in ("horowitz45", "sata"):
            hardware.sweep_networks(
                {"m": masks}, specs, configs, energy_model=model, backend="numpy"
            )
    assert c.count == 0


@pytest.mark.parametrize("shape", [(3, 3, 5, 7), (6, 5), (2, 2, 1, 9), (3, 3, 13, 2)])
def test_host_count_tables_and_group_loads_equal_jax(shape):
    mask = np.random.default_rng(0).random(shape) < 0.4
    jax_tables = hardware.count_tables(mask)
    host_tables = hardware.count_tables(mask, backend="numpy")
    assert sorted(jax_tables) == sorted(host_tables)  # (jit returns its dicts sorted)
    for name, m in wm.MAPPINGS.items():
        assert isinstance(host_tables[name], np.ndarray)
        np.testing.assert_array_equal(np.asarray(jax_tables[name]), host_tables[name])
        for n in range(1, max(shape[-2:]) + 3):
            gsum, gmax = hardware.group_loads(jax_tables, shape, n, name)
            hsum, hmax = m.host_group_loads(host_tables[name], shape, n)
            g = len(hsum)
            assert hsum.dtype == hmax.dtype == np.int32
            np.testing.assert_array_equal(np.asarray(gsum)[:g], hsum, err_msg=f"n={n}")
            np.testing.assert_array_equal(np.asarray(gmax)[:g], hmax, err_msg=f"n={n}")
            assert not np.asarray(gsum)[g:].any()


def test_numpy_backend_with_a_mapping_without_fast_paths():
    assert INTERLEAVED.fast is None  # every view derived from the assignment, numpy ones too
    with workload.registered_mapping(INTERLEAVED, check=False):
        masks = _masks(2)
        specs = hardware.specs_from_shapes({k: v.shape for k, v in masks.items()}, input_size=8)
        configs = hardware.config_grid(n_pe=[1, 3, 6], mapping=[INTERLEAVED.name])
        want = hardware.simulate_masks(masks, specs, configs)
        got = hardware.simulate_masks(masks, specs, configs, backend="numpy")
        assert_backends_agree(want, got)


def test_backend_is_validated():
    masks = _masks(0)
    specs = hardware.specs_from_shapes({k: v.shape for k, v in masks.items()}, input_size=8)
    cfg = hardware.make_config(n_pe=4)
    tables = hardware.network_tables(masks, specs, backend="numpy")
    msg = r"^backend: must be one of jax, numpy, got 'torch'$"
    with pytest.raises(ValueError, match=msg):
        hardware.simulate(tables, specs, cfg, backend="torch")
    with pytest.raises(ValueError, match=msg):
        hardware.simulate_masks(masks, specs, cfg, backend="torch")
    with pytest.raises(ValueError, match=msg):
        hardware.sweep_networks({"m": masks}, specs, cfg, backend="torch")
    with pytest.raises(ValueError, match=msg):
        hardware.network_tables(masks, specs, backend="torch")
    with pytest.raises(ValueError, match=r"^devices: the numpy backend runs on the host"):
        hardware.simulate(tables, specs, cfg, backend="numpy", devices=jax.devices())


# ---- experiments/sweep.py ----------------------------------------------------------------------


def _popen(args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, SCRIPT, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _numbers(path) -> list[dict[str, float]]:
    with open(path) as f:
        return [{k: float(v) for k, v in r.items() if _is_number(v)} for r in csv.DictReader(f)]


def _is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def test_sweep_cli_defaults_to_numpy_and_jax_gives_the_same_numbers(tmp_path):
    save_mask_file(str(tmp_path / "a.npz"), _masks(4))
    save_mask_file(str(tmp_path / "b.npz"), _masks(5))
    common = ["--masks", str(tmp_path / "a.npz"), "--compare", str(tmp_path / "b.npz")]
    common += ["--n_pe", "1,2,3,8", "--input_size", "8", "--timesteps", "2,4", "--print_rows=0"]
    runs = {
        "default": _popen([*common, "--out", str(tmp_path / "default")]),
        "jax": _popen([*common, "--backend", "jax", "--out", str(tmp_path / "jax")]),
    }
    for k, p in runs.items():  # both run at once
        stdout, stderr = p.communicate(timeout=180)
        assert p.returncode == 0, stderr[-2000:]
        assert f"backend {'numpy' if k == 'default' else 'jax'})" in stdout
    want = _numbers(tmp_path / "jax" / "sweep.csv")
    got = _numbers(tmp_path / "default" / "sweep.csv")
    assert len(want) == len(got) == 2 * 2 * 4 * 2 and list(want[0]) == list(got[0])
    for w, g in zip(want, got, strict=True):
        for k, v in w.items():
            same = math.isclose(g[k], v, rel_tol=1e-6) or (math.isnan(v) and math.isnan(g[k]))
            assert same, (k, v, g[k])
    # A bad --backend (or numpy in a --distributed run) is one line and exit status 2, nothing
    # written: see the "--backend" cases of tests/test_sweep_cli.py::test_sweep_bad_inputs.
