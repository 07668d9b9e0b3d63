"""`uticket_jax.checks` and the public functions that use it: nothing wraps, nothing is NaN,
masks are boolean or exactly 0/1, layer specs and layouts fit, everywhere the same rule."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uticket_jax import checks, configs, hardware, workload
from uticket_jax.sparsity import masks as M
from uticket_jax.training import step as train

SHAPES = {
    "features/conv0/kernel": (3, 3, 1, 4),
    "features/conv1/kernel": (3, 3, 4, 8),
    "classifier/kernel": (32, 10),
}


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.integers(), st.integers(-(2**70), 2**70)), st.sampled_from([None, 0, 1]))
def test_integers_are_kept_or_refused_never_wrapped(value, minimum):
    try:
        got = checks.check_int_array("n_pe", [value], minimum=minimum)
    except ValueError as e:
        assert str(e).startswith("n_pe: ") and "\n" not in str(e)
        assert (
            value > checks.INT32_MAX
            or (minimum is not None and value < minimum)
            or (value < -(2**31))
        )
    else:
        assert int(got[0]) == value and got.dtype == np.int32


def test_the_issues_wraps_are_refused():
    for bad in (4294967312, 2**31):  # 4294967312 wrapped to 16 PEs
        with pytest.raises(ValueError, match=r"^n_pe: must be integers"):
            hardware.config_grid(n_pe=[bad])
        with pytest.raises(ValueError, match=r"^timesteps: must be integers"):
            hardware.make_config(timesteps=bad)
    assert int(hardware.make_config(n_pe=2**31 - 1).n_pe) == 2**31 - 1
    # jax.random.key keeps 32 bits: 2**32 would be key(0), -1 key(2**32 - 1).
    for bad in (2**32, -1, 2**63):
        with pytest.raises(ValueError, match=r"^--seed: must be an integer in \[0, 4294967295\]"):
            checks.check_seed("--seed", bad)
    with pytest.raises(ValueError, match="--n_pe: must be integers <= 2147483647"):
        checks.parse_int_list("--n_pe", "4,4294967312")


@pytest.mark.parametrize(
    "kw, flag",
    [
        ({"lr": math.nan}, "--lr"),
        ({"lr": math.inf}, "--lr"),
        ({"lr": -1.0}, "--lr"),
        ({"lr": 0.0}, "--lr"),
        ({"momentum": 5.0}, "--momentum"),
        ({"momentum": 1.0}, "--momentum"),
        ({"weight_decay": -1.0}, "--weight_decay"),
        ({"weight_decay": math.nan}, "--weight_decay"),
        ({"prune_percent": math.nan}, "--prune_percent"),
        ({"et_threshold": math.nan}, "--et_threshold"),
        ({"seed": 2**32}, "--seed"),
        ({"epochs": 2**31}, "--epochs"),
        ({"n_pe": 2**16 + 1}, "--n_pe"),
        ({"timesteps": 2.5}, "--timesteps"),
        ({"et_candidates": (1, 2**40)}, "--et_candidates"),
        ({"arms": ("lth", "lth")}, "--arms"),
        ({"et": "yes"}, "--et"),
    ],
)
def test_training_settings_are_checked_before_the_run(kw, flag):
    cfg = configs.get("digits").replace(**kw)
    with pytest.raises(ValueError, match=f"^{flag}: ") as err:
        cfg.validate()
    assert "\n" not in str(err.value)


def test_make_optimizer_refuses_what_would_diverge_later():
    for kw, name in (({"lr": math.nan}, "lr"), ({"momentum": 5.0}, "momentum")):
        with pytest.raises(ValueError, match=f"^{name}: "):
            train.make_optimizer(total_steps=10, **kw)
    with pytest.raises(ValueError, match="^total_steps: "):
        train.make_optimizer(total_steps=2**31)
    train.make_optimizer(total_steps=10, momentum=0.0, lr=1e-3)


def _masks(rng, kind=bool):
    return {k: (rng.random(s) < 0.5).astype(kind) for k, s in SHAPES.items()}


def test_masks_are_boolean_or_exactly_01_in_every_public_function():
    rng = np.random.default_rng(0)
    good = _masks(rng)
    specs = hardware.specs_from_shapes(SHAPES, input_size=8, skip_first=False)
    cfg = hardware.config_grid(n_pe=[2, 4])
    want = hardware.simulate_masks(good, specs, cfg, backend="numpy")
    ones = {k: v.astype(np.float32) for k, v in good.items()}
    got = hardware.simulate_masks(ones, specs, cfg, backend="numpy")
    np.testing.assert_array_equal(got.network.cycles, want.network.cycles)
    fuzzy = dict(ones)
    fuzzy["features/conv1/kernel"] = ones["features/conv1/kernel"] * 0.7  # 0.7 was "kept"
    for fn in (
        lambda m: hardware.simulate_masks(m, specs, cfg, backend="numpy"),
        lambda m: hardware.simulate_masks(m, specs, cfg, backend="jax"),
        lambda m: workload.rebalance_network(m, n_pe=4, policy="random", key=jax.random.key(0)),
    ):
        with pytest.raises(ValueError, match=r"masks\['features/conv1/kernel'\]: not boolean"):
            fn(fuzzy)
    with pytest.raises(ValueError, match="^mask: not boolean"):
        hardware.count_tables(np.full((3, 3, 2, 2), 0.3))
    # Inside a trace the values cannot be seen: a traced mask must be boolean.
    with pytest.raises(ValueError, match="traced mask must be boolean"):
        jax.jit(lambda m: checks.bool_mask(m, "mask").sum())(jnp.ones((2, 2)))


def test_layer_specs_are_checked_at_the_simulator():
    rng = np.random.default_rng(1)
    m = _masks(rng)
    specs = hardware.specs_from_shapes(SHAPES, input_size=8, skip_first=False)
    cfg = hardware.config_grid(n_pe=[4])
    bad = {
        "out_hw": specs[1]._replace(out_hw=(-4, 4)),  # subtracted work
        "kernel_shape": specs[1]._replace(kernel_shape=(3, 3, 4, 0)),
        "analysed": specs[1]._replace(analysed="yes"),
        "positions": specs[1]._replace(out_hw=(2**16, 2**16)),
    }
    for field, spec in bad.items():
        broken = [specs[0], spec, specs[2]]
        with pytest.raises(ValueError, match=f"specs\\['features/conv1/kernel'\\]: .*{field[:6]}"):
            hardware.simulate_masks(m, broken, cfg, backend="numpy")
    with pytest.raises(ValueError, match="described twice"):
        hardware.simulate_masks(m, [specs[0], specs[0]], cfg, backend="numpy")


def test_a_file_that_fits_only_the_other_layout_is_refused(tmp_path):
    rng = np.random.default_rng(2)
    m = _masks(rng)
    hwio, oihw = str(tmp_path / "hwio.npz"), str(tmp_path / "oihw.npz")
    M.save_mask_file(hwio, m)
    M.save_mask_file(oihw, m, layout="oihw")
    for path, wrong, right in ((hwio, "oihw", "hwio"), (oihw, "hwio", "oihw")):
        with pytest.raises(ValueError, match=f"fit together only in {right} layout") as err:
            M.load_mask_file(path, layout=wrong)
        assert "\n" not in str(err.value) and path in str(err.value)
        back = M.load_mask_file(path, layout=right)
        assert all(np.array_equal(back[k], m[k]) for k in m)
    # Parts of a network that do not chain in either layout are not refused (nothing is known).
    loose = {"a/kernel": np.ones((3, 3, 5, 7), bool), "b/kernel": np.ones((3, 3, 11, 13), bool)}
    M.save_mask_file(str(tmp_path / "loose.npz"), loose)
    assert list(M.load_mask_file(str(tmp_path / "loose.npz"))) == list(loose)


def test_every_project_model_reads_only_in_its_own_layout():
    from uticket_jax import models

    for name, shape in (
        ("digits_snn", (8, 8, 1)),
        ("vgg16", (32, 32, 3)),
        ("resnet19", (32, 32, 3)),
    ):
        layers = models.describe_layers(models.get_model(name, num_classes=10, timesteps=1), shape)
        stored = {x.path: tuple(x.kernel_shape) for x in layers}
        checks.check_layout(stored, "hwio", name)
        with pytest.raises(ValueError, match="only in hwio layout"):
            checks.check_layout(stored, "oihw", name)
