"""NIR export and import (uticket_jax.interop): the LIF derivation, layouts, BN folding, the graph's
structure and metadata, the round trip, and every kind of bad input. No NIR consumer needed."""

from __future__ import annotations

import h5py
import jax
import nir
import numpy as np
import pytest

from uticket_jax import models, workload
from uticket_jax.hardware import specs_from_layers
from uticket_jax.interop import (
    arrays,
    export_nir,
    import_nir,
    is_nir_file,
    lif_parameters,
    read_nir,
    write_nir,
)
from uticket_jax.snn import LIFConfig, lif_multistep

F32 = np.float32


def _nir_euler(x, p, strict=True):
    """NIR's LIF, one forward-Euler step of dt = 1 per row of `x` (float32, from v = v_reset)."""
    v = np.full(x.shape[1:], p["v_reset"], F32)
    out = []
    for x_t in x:
        h = v + ((F32(p["v_leak"]) - v) + F32(p["r"]) * x_t) / F32(p["tau"])
        z = (h > F32(p["v_threshold"])) if strict else (h >= F32(p["v_threshold"]))
        v = np.where(z, F32(p["v_reset"]), h).astype(F32)
        out.append(z.astype(F32))
    return np.stack(out)


def _currents(seed=0):
    """Currents `[T, N]` that put the potential on, just below and just above the threshold."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.8, 0.6, (6, 4000)).astype(F32)
    # Step 0 from v = 0: h = x / tau. Solve for h exactly 1, pred(1), succ(1).
    tau = F32(4.0 / 3.0)
    for j, h in enumerate([F32(1), np.nextafter(F32(1), F32(0)), np.nextafter(F32(1), F32(2))]):
        c = h * tau
        for cand in (c, np.nextafter(c, F32(0)), np.nextafter(c, F32(2))):
            if (cand - F32(0)) / tau == h:  # our charge from rest: h = v + (x - v) / tau
                x[0, j] = cand
    return x


def test_lif_parameters_make_nir_euler_step_our_update_bit_for_bit():
    neuron = LIFConfig()
    p = lif_parameters(neuron)
    assert p == {
        "tau": float(F32(4 / 3)),
        "r": 1.0,
        "v_leak": 0.0,
        "v_threshold": float(np.nextafter(F32(1), F32(0))),
        "v_reset": 0.0,
    }
    x = _currents()
    ours = np.asarray(lif_multistep(x, **neuron.kwargs()))
    h0 = x[0, :3] / F32(4 / 3)
    assert h0[0] == F32(1) and h0[1] == np.nextafter(F32(1), F32(0))  # the edge cases are hit
    np.testing.assert_array_equal(_nir_euler(x, p, strict=True), ours)
    # A reader that fires on >= (SpikingJelly) differs exactly where h == pred(v_th).
    loose = _nir_euler(x, p, strict=False)
    assert loose[0, 1] == 1 and ours[0, 1] == 0
    assert (loose != ours).sum() >= 1


def test_inclusive_firing_writes_v_th():
    p = lif_parameters(LIFConfig(), firing="inclusive")
    assert p["v_threshold"] == 1.0
    x = _currents()
    ours = np.asarray(lif_multistep(x, **LIFConfig().kwargs()))
    np.testing.assert_array_equal(_nir_euler(x, p, strict=False), ours)
    assert (_nir_euler(x, p, strict=True) != ours).sum() >= 1  # h == 1 exactly is hit
    with pytest.raises(ValueError, match="firing"):
        lif_parameters(LIFConfig(), firing="ge")


def test_lif_parameters_other_settings():
    p = lif_parameters(LIFConfig(tau=2.0, v_threshold=0.5, v_reset=-0.25, decay_input=False))
    assert p["r"] == 2.0 and p["v_leak"] == p["v_reset"] == -0.25
    assert p["v_threshold"] == float(np.nextafter(F32(0.5), F32(0)))
    x = np.random.default_rng(1).normal(0.3, 0.5, (8, 500)).astype(F32)
    neuron = LIFConfig(tau=2.0, v_threshold=0.5, v_reset=-0.25, decay_input=False)
    ours = np.asarray(lif_multistep(x, **neuron.kwargs()))
    # r = tau reorders the arithmetic: equal spikes up to rounding at the threshold.
    assert (_nir_euler(x, p) != ours).mean() < 1e-3
    with pytest.raises(ValueError, match="hard reset"):
        lif_parameters(LIFConfig(v_reset=None))


def test_layouts_are_exact_inverses_and_flatten_orders_agree():
    rng = np.random.default_rng(0)
    k = rng.normal(size=(3, 3, 5, 7)).astype(F32)
    np.testing.assert_array_equal(arrays.conv_from_oihw(arrays.conv_to_oihw(k)), k)
    assert arrays.conv_to_oihw(k)[6, 4, 2, 1] == k[2, 1, 4, 6]
    c, h, w = 4, 3, 2
    dense = rng.normal(size=(h * w * c, 10)).astype(F32)
    nir_w = arrays.dense_to_nir(dense, (c, h, w))
    np.testing.assert_array_equal(arrays.dense_from_nir(nir_w, (c, h, w)), dense)
    x = rng.normal(size=(h, w, c)).astype(F32)  # one map: ours flattens HWC, NIR CHW
    np.testing.assert_allclose(x.ravel() @ dense, nir_w @ x.transpose(2, 0, 1).ravel(), rtol=1e-5)
    with pytest.raises(ValueError, match="flattened map"):
        arrays.dense_to_nir(dense, (5, h, w))


def test_fold_batch_norm_is_the_bn_of_the_conv():
    rng = np.random.default_rng(0)
    k = rng.normal(size=(3, 3, 2, 4)).astype(F32)
    mask = rng.random(k.shape) < 0.5
    bn = {
        "scale": rng.normal(size=4).astype(F32),
        "bias": rng.normal(size=4).astype(F32),
        "mean": rng.normal(size=4).astype(F32),
        "var": rng.uniform(0.5, 2, 4).astype(F32),
    }
    bn["scale"][1] = 0.0  # a dead channel: its kept weights fold to 0
    f = arrays.fold_batch_norm(k, mask, bn=bn)
    y = rng.normal(size=(10, 3, 3, 2)).astype(F32)  # patches
    conv = np.einsum("nhwc,hwco->no", y, np.where(mask, k, 0))
    want = (conv - bn["mean"]) / np.sqrt(bn["var"] + 1e-5) * bn["scale"] + bn["bias"]
    got = np.einsum("nhwc,hwco->no", y, f.kernel) + f.bias
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert f.kept_zero == int(mask[..., 1].sum())
    assert f.kernel.dtype == f.bias.dtype == np.float32


def _tiny(arch, seed=0, sparsity=0.8):
    """A small model, its variables with BN statistics that matter, and random masks."""
    kw = {
        "digits_snn": {"channels": (4, 8, 16)},
        "fmnist_snn": {"cfg": (4, "M", 8, "M", 16, 16)},
        "vgg16": {},
    }[arch]
    model = models.get_model(arch, num_classes=10, timesteps=3, **kw)
    shape = {"digits_snn": (8, 8, 1), "fmnist_snn": (28, 28, 1), "vgg16": (32, 32, 3)}[arch]
    rng = np.random.default_rng(seed)
    x = jax.ShapeDtypeStruct((1, *shape), np.float32)
    abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    # Random values of the variables' shapes (no compiled init: fast); variances positive.
    variables = jax.tree_util.tree_map_with_path(
        lambda p, a: (
            rng.uniform(0.5, 2.0, a.shape) if p[-1].key == "var" else rng.normal(0, 0.5, a.shape)
        ).astype(F32),
        abstract,
    )
    layers = models.describe_layers(model, shape)
    masks = {x.path: rng.random(x.kernel_shape) >= sparsity for x in layers}
    return model, variables, masks, shape, layers


@pytest.mark.parametrize("arch", ["digits_snn", "fmnist_snn"])
def test_export_graph_structure_and_metadata(arch):
    model, variables, masks, shape, layers = _tiny(arch)
    g = export_nir(model, variables, masks, input_shape=shape, n_pe=4, mapping="input_split")
    order = [b for _, b in g.edges]
    kinds = [type(g.nodes[n]).__name__ for n in order]
    if arch == "digits_snn":
        assert kinds == ["Conv2d", "LIF"] * 3 + ["SumPool2d", "IF", "Flatten", "Affine", "Output"]
    else:
        assert kinds == (
            ["Conv2d", "LIF", "SumPool2d", "IF", "Conv2d", "LIF", "SumPool2d", "IF"]
            + ["Conv2d", "LIF"] * 2
            + ["Flatten", "Affine", "Output"]
        )
    assert g.metadata["timesteps"] == 3 and g.metadata["dt"] == 1.0
    for x in layers:
        node = g.nodes[x.path.split("/")[-2]]
        meta = node.metadata
        assert meta["param_path"] == x.path and meta["mapping"] == "input_split"
        loads = workload.pe_loads(masks[x.path], 4, "input_split")
        np.testing.assert_array_equal(meta["loads"], loads)
        assert meta["bn_folded"] == (x.kind == "conv")
    lif = g.nodes["lif1"]
    assert lif.tau.shape == lif.v_threshold.shape == tuple(g.nodes["conv1"].output_type["output"])
    thr = export_nir(model, variables, masks, input_shape=shape, pooling="threshold")
    assert isinstance(thr.nodes["pool0_or"], nir.Threshold)
    assert "loads" not in thr.nodes["conv1"].metadata
    assert import_nir(thr).specs == import_nir(g).specs  # the pooling form changes no geometry


def test_export_vgg16_structure():
    model, variables, masks, shape, layers = _tiny("vgg16")
    g = export_nir(model, variables, masks, input_shape=shape)  # no n_pe: no loads
    kinds = [type(g.nodes[b]).__name__ for _, b in g.edges]
    assert kinds.count("Conv2d") == kinds.count("LIF") == 13
    assert kinds.count("SumPool2d") == kinds.count("IF") == 5
    assert kinds[-3:] == ["Flatten", "Affine", "Output"]
    assert g.nodes["flatten"].input_type["input"].tolist() == [512, 1, 1]
    assert g.nodes["conv12"].metadata["param_path"] == "features/conv12/kernel"


@pytest.mark.parametrize("arch", ["digits_snn", "fmnist_snn"])
def test_round_trip_gives_back_masks_and_folded_weights_bit_for_bit(arch, tmp_path):
    model, variables, masks, shape, layers = _tiny(arch, seed=1)
    path = str(tmp_path / "t.nir")
    write_nir(path, export_nir(model, variables, masks, input_shape=shape, n_pe=4))
    assert is_nir_file(path)
    t = import_nir(path)
    graph = nir.read(path)
    assert list(t.masks) == [x.path for x in layers]
    params, stats = variables["params"]["features"], variables["batch_stats"]["features"]
    for x in layers:
        mod = x.path.split("/")[-2]
        if x.kind == "conv":
            i = mod[4:]
            bn = {**params[f"bn{i}"], **stats[f"bn{i}"]}
            want = arrays.fold_batch_norm(params[mod]["kernel"], masks[x.path], bn=bn)
        else:
            p = variables["params"]["classifier"]
            want = arrays.fold_batch_norm(p["kernel"], masks[x.path], bias=p["bias"])
        assert want.kept_zero == 0
        np.testing.assert_array_equal(t.masks[x.path], masks[x.path])
        np.testing.assert_array_equal(t.weights[x.path], want.kernel)
        np.testing.assert_array_equal(graph.nodes[t.nodes[x.path]].bias, want.bias)
        assert t.weights[x.path].dtype == np.float32
    # The specs are those of the model's own layer table.
    assert t.specs == specs_from_layers(layers)


def _graph(nodes, edges):
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def _small_graph(**replace):
    nodes = {
        "input": nir.Input({"input": np.array([2, 6, 6])}),
        "conv": nir.Conv2d(
            input_shape=(6, 6),
            weight=np.ones((3, 2, 3, 3), F32),
            stride=1,
            padding=0,
            dilation=1,
            groups=1,
            bias=np.zeros(3, F32),
        ),
        "lif": nir.LIF(*(np.ones((3, 4, 4), F32) * v for v in (2.0, 1.0, 0.0, 1.0, 0.0))),
        "flat": nir.Flatten({"input": np.array([3, 4, 4])}, start_dim=0, end_dim=-1),
        "fc": nir.Affine(np.ones((5, 48), F32), np.zeros(5, F32)),
        "output": nir.Output({"output": np.array([5])}),
    }
    nodes.update(replace)
    order = ["input", "conv", "lif", "flat", "fc", "output"]
    return _graph(nodes, list(zip(order[:-1], order[1:], strict=True)))


def test_import_a_hand_written_graph():
    t = import_nir(_small_graph(), skip_first=False, conv_only=False)
    assert [s.out_hw for s in t.specs] == [(4, 4), (1, 1)]
    assert [s.kernel_shape for s in t.specs] == [(3, 3, 2, 3), (1, 1, 48, 5)]
    assert t.nodes == {"conv": "conv", "fc": "fc"} and all(s.analysed for s in t.specs)


@pytest.mark.parametrize(
    "graph_fn, match",
    [
        (
            lambda: _small_graph(lif=nir.Delay(np.ones((3, 4, 4), F32))),
            r"node 'lif' has type Delay, which uticket_jax cannot map",
        ),
        (
            lambda: _graph({**_small_graph().nodes}, [*_small_graph().edges, ("lif", "conv")]),
            r"recurrent edge",
        ),
        (
            lambda: _small_graph(fc=nir.Affine(np.ones((5, 40), F32), np.zeros(5, F32))),
            r"node 'fc' \(Affine, weight \(5, 40\)\) gets input of shape \(48,\)",
        ),
        (
            lambda: _small_graph(input=nir.Input({"input": np.array([3, 6, 6])})),
            r"node 'conv' \(Conv2d, weight \(3, 2, 3, 3\)\) gets input of shape \(3, 6, 6\)",
        ),
        (
            lambda: _small_graph(lif=nir.LIF(*(np.ones((3, 5, 5), F32),) * 5)),
            r"node 'lif' \(LIF\) has 75 neurons",
        ),
        (lambda: _graph({"input": _small_graph().nodes["input"]}, []), r"no Conv2d, Affine"),
    ],
)
def test_import_refuses_bad_graphs(graph_fn, match):
    with pytest.raises(ValueError, match=match):
        import_nir(graph_fn())


def test_import_refuses_bad_files(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        import_nir(str(tmp_path / "missing.nir"))
    junk = tmp_path / "junk.nir"
    junk.write_bytes(b"PK\x03\x04 not hdf5")
    with pytest.raises(ValueError, match=r"junk.nir: not a NIR file \(NIR files are HDF5\)"):
        import_nir(str(junk))
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=np.arange(3))
    assert is_nir_file(str(other))
    with pytest.raises(ValueError, match="other.h5: not a readable NIR graph"):
        read_nir(str(other))
    path = str(tmp_path / "delay.nir")
    nir.write(path, _small_graph(lif=nir.Delay(np.ones((3, 4, 4), F32))))
    with pytest.raises(ValueError, match=r"delay.nir: node 'lif' has type Delay"):
        import_nir(path)


def test_image_shapes_are_the_datasets():
    from uticket_jax import data
    from uticket_jax.interop import IMAGE_SHAPES

    assert set(IMAGE_SHAPES) == set(data.DATASET_NAMES)
    assert IMAGE_SHAPES["digits"] == tuple(data.load_dataset("digits").image_shape)
