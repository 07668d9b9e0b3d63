"""The library's own install brings only what the library imports.

`pip install uticket_jax` installs jax, flax, optax, orbax-checkpoint and numpy; the launchers'
packages (absl-py, matplotlib, nir, scikit-learn, scipy, tqdm) come with the `experiments` extra
(NIR alone with the `nir` extra: `uticket_jax.interop` needs it and says so). Here
every library package is imported, and a rebalance, a sweep and a few training steps run, in a
process where those packages cannot be imported.
"""

from __future__ import annotations

import configparser
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# absl-py is not among them: optax itself depends on it.
LAUNCHER_ONLY = ("matplotlib", "sklearn", "scipy", "tqdm", "nir", "h5py")

_PROBE = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {LAUNCHER_ONLY!r}:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import numpy as np, jax, jax.numpy as jnp, optax
import uticket_jax
from uticket_jax import (configs, data, hardware, models, ops, pipeline, snn, sparsity, training,
                         trees, workload)
from uticket_jax.workload import synthetic
masks, weights = synthetic.vgg16_sparse(seed=0, sparsity=0.95)
new, rep = workload.rebalance_network(masks, weights, n_pe=8, backend="numpy")
assert float(rep.after.utilization) == 1.0
specs = hardware.specs_from_shapes({{k: v.shape for k, v in masks.items()}}, input_size=32)
res = hardware.simulate_masks(new, specs, hardware.config_grid(n_pe=[8, 16]), backend="numpy")
model = models.get_model("digits_snn", num_classes=10, timesteps=2)
x = jnp.zeros((4, 8, 8, 1))
variables = model.init(jax.random.key(0), x, train=False)
tx = training.make_optimizer(total_steps=4)
masks = sparsity.make_masks(variables["params"])
state = training.create_train_state(model.apply, variables, tx, masks)
state, metrics = training.train_step(state, x, jnp.zeros(4, jnp.int32))
try:
    data.load_dataset("digits")
except ValueError as e:
    assert "experiments" in str(e), e
else:
    raise AssertionError("digits loaded without scikit-learn")
try:
    import uticket_jax.interop
except ImportError as e:
    assert "uticket_jax[nir]" in str(e), e
else:
    raise AssertionError("interop imported without nir")
print("LIBRARY_OK", sorted(m for m in sys.modules if m.split(".")[0] in {LAUNCHER_ONLY!r}))
"""


def test_install_requires_is_the_library_only():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    req = [
        r.split(">")[0].split("=")[0].strip() for r in cfg["options"]["install_requires"].split()
    ]
    assert req == ["jax", "flax", "optax", "orbax-checkpoint", "numpy"]
    extra = cfg["options.extras_require"]["experiments"].split()
    assert sorted(r.split(">")[0] for r in extra) == [
        "absl-py",
        "matplotlib",
        "nir",
        "scikit-learn",
        "scipy",
        "tqdm",
    ]


def _python(code: str) -> str:
    """The standard output of `code` run by a fresh interpreter (which must succeed)."""
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_the_library_runs_without_the_launchers_packages():
    stdout = _python(_PROBE)
    assert "LIBRARY_OK []" in stdout, stdout


_NO_FLAX = """
import sys
import numpy as np
from uticket_jax import checks, files, hardware, workload
import uticket_jax.sparsity.masks
rng = np.random.default_rng(0)
masks = {"a/kernel": rng.random((3, 3, 4, 8)) < 0.3, "b/kernel": rng.random((3, 3, 8, 8)) < 0.3}
weights = {k: rng.standard_normal(m.shape).astype(np.float32) for k, m in masks.items()}
new, _ = workload.rebalance_network(masks, weights, n_pe=4, backend="numpy")
specs = hardware.specs_from_shapes({k: m.shape for k, m in masks.items()}, input_size=8)
hardware.simulate_masks(new, specs, hardware.config_grid(n_pe=[2, 4]), backend="numpy")
print("FLAX_LOADED", sorted(m for m in sys.modules if m.split(".")[0] == "flax")[:3])
"""


def test_weight_only_paths_do_not_import_flax():
    # The cold start of rebalance.py and sweep.py: the spike-driven names of `hardware` need the
    # models' convolution (and Flax); they are imported on first use, not with the package.
    stdout = _python(_NO_FLAX)
    assert "FLAX_LOADED []" in stdout, stdout
