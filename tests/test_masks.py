"""Mask pytrees, the .npz mask format and the shared workload metric definitions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uticket_jax.sparsity import masks as M
from uticket_jax.workload import metrics


def _params():
    return {
        "features": {
            "conv0": {"kernel": jnp.ones((3, 3, 1, 4))},
            "bn0": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
            "conv1": {"kernel": jnp.ones((3, 3, 4, 8))},
        },
        "classifier": {"kernel": jnp.ones((8, 10)), "bias": jnp.zeros(10)},
    }


def test_make_masks_marks_only_kernels_prunable_and_flatten_keeps_network_order():
    masks = M.make_masks(_params())
    assert masks["features"]["bn0"]["scale"] is None
    assert masks["classifier"]["bias"] is None
    flat = M.flatten(masks)
    assert list(flat) == ["features/conv0/kernel", "features/conv1/kernel", "classifier/kernel"]
    assert all(v.dtype == bool and bool(v.all()) for v in flat.values())


def test_apply_masks_and_sparsity_report():
    params = _params()
    masks = M.make_masks(params)
    masks["features"]["conv1"]["kernel"] = jnp.zeros((3, 3, 4, 8), bool)
    out = M.apply_masks(params, masks)
    assert float(out["features"]["conv1"]["kernel"].sum()) == 0
    assert float(out["classifier"]["bias"].sum()) == 0  # untouched non-prunable leaf
    assert float(out["features"]["bn0"]["scale"].sum()) == 4
    rep = M.sparsity_report(masks)
    total = 9 * 4 + 9 * 32 + 80
    assert rep["global"] == pytest.approx(9 * 32 / total)
    assert rep["layers"]["features/conv1/kernel"] == 1.0


def test_unflatten_round_trip_and_unknown_key():
    params = _params()
    flat = M.flatten(M.make_masks(params))
    back = M.unflatten(flat, params)
    assert back["features"]["bn0"]["scale"] is None
    assert back["classifier"]["kernel"].shape == (8, 10)
    with pytest.raises(ValueError, match="flat"):
        M.unflatten({"nope/kernel": flat["classifier/kernel"]}, params)


@pytest.mark.parametrize("layout", M.LAYOUTS)
def test_mask_file_round_trip_keeps_order_and_layout(tmp_path, layout):
    rng = np.random.default_rng(0)
    flat = {
        "b/conv/kernel": rng.random((3, 3, 2, 5)) < 0.5,
        "a/fc/kernel": rng.random((7, 3)) < 0.5,
    }
    path = str(tmp_path / "m.npz")
    M.save_mask_file(path, flat, layout=layout)
    with np.load(path) as z:
        assert z.files == list(flat)
        if layout == "oihw":
            assert z["b/conv/kernel"].shape == (5, 2, 3, 3)
            assert z["a/fc/kernel"].shape == (3, 7)
    back = M.load_mask_file(path, layout=layout)
    assert list(back) == list(flat)
    for k in flat:
        np.testing.assert_array_equal(back[k], flat[k])


def test_load_mask_file_accepts_01_and_rejects_bad_files(tmp_path):
    p = tmp_path / "ok.npz"
    np.savez(p, x=np.array([[0, 1], [1, 0]], np.uint8))
    assert M.load_mask_file(str(p))["x"].dtype == bool
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="not boolean"):
        M.load_mask_file(str(bad))
    empty = tmp_path / "empty.npz"
    np.savez(empty)
    with pytest.raises(ValueError, match="no arrays"):
        M.load_mask_file(str(empty))
    rank = tmp_path / "rank.npz"
    np.savez(rank, x=np.ones(3, bool))
    with pytest.raises(ValueError, match="shape"):
        M.load_mask_file(str(rank))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="readable"):
        M.load_mask_file(str(junk))
    with pytest.raises(ValueError, match="no such file"):
        M.load_mask_file(str(tmp_path / "missing.npz"))
    with pytest.raises(ValueError, match="layout"):
        M.load_mask_file(str(p), layout="nchw")


def test_check_same_keys():
    m = {"a": np.ones((2, 3), bool)}
    M.check_same_keys(m, {"a": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="no array"):
        M.check_same_keys(m, {"b": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="shape"):
        M.check_same_keys(m, {"a": np.zeros((3, 2))})


# --- shared metric definitions -----------------------------------------------------------------


def test_group_metrics_known_values():
    loads = np.array([[4, 2, 2, 0], [3, 3, 3, 3], [0, 0, 0, 0]])
    m = metrics.loads_metrics(loads)
    # group 0: mean 2, max 4 -> util 0.5; normalized 1 - (4 - 2)/4 * 4/3 = 1/3; group 1: 1, 1.
    assert float(m.utilization) == pytest.approx((0.5 + 1.0) / 2)
    assert float(m.utilization_normalized) == pytest.approx((1 / 3 + 1.0) / 2)
    assert int(m.latency) == 4 + 3
    assert int(m.wasted) == (16 - 8) + 0
    assert int(m.dynamic) == 20


def test_single_pe_and_empty_layer():
    m = metrics.loads_metrics(np.array([[5], [2]]))
    assert float(m.utilization) == 1.0 and float(m.utilization_normalized) == 1.0
    empty = metrics.loads_metrics(np.zeros((3, 4), int))
    assert math.isnan(float(empty.utilization)) and int(empty.latency) == 0
    assert empty.to_dict()["utilization"] is None
    net = metrics.network_metrics([m, empty])
    assert float(net.utilization) == 1.0 and int(net.latency) == 7


def test_metrics_accept_traced_n():
    f = jax.jit(lambda s, mx, n: metrics.layer_metrics(s, mx, n))
    a = f(jnp.array([8, 12]), jnp.array([4, 3]), 4)
    b = metrics.loads_metrics(np.array([[4, 2, 2, 0], [3, 3, 3, 3]]))
    for x, y in zip(a, b, strict=True):
        assert float(x) == pytest.approx(float(y))


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda n: st.lists(st.lists(st.integers(0, 9), min_size=n, max_size=n), min_size=1)
    )
)
def test_metric_invariants(rows):
    loads = np.array(rows)
    m = metrics.loads_metrics(loads)
    nonempty = loads.max(1) > 0
    if nonempty.any():
        assert 0.0 < float(m.utilization) <= 1.0 + 1e-6
        assert float(m.utilization_normalized) <= 1.0 + 1e-6
    assert int(m.latency) >= int(np.ceil(loads.sum(1) / loads.shape[1]).sum())
    assert int(m.wasted) == int((loads.max(1, keepdims=True) - loads).sum())
    balanced = np.repeat(loads.max(1, keepdims=True), loads.shape[1], 1)
    mb = metrics.loads_metrics(balanced)
    if nonempty.any():
        assert float(mb.utilization) == pytest.approx(1.0)
        assert float(mb.utilization_normalized) == pytest.approx(1.0)
    assert int(mb.wasted) == 0


def test_analysed_layers_default_skips_first_conv_and_dense():
    shapes = [(3, 3, 3, 8), (3, 3, 8, 8), (8, 10)]
    assert metrics.analysed_layers(shapes) == [False, True, False]
    assert metrics.analysed_layers(shapes, conv_only=False, skip_first=False) == [True] * 3
