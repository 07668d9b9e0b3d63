"""NIR both ways with SpikingJelly: a network built and pruned in SpikingJelly, exported by its
`export_to_nir`, imported here and rebalanced (figures against the loop oracle); and a tiny
Fashion-MNIST ticket of the pipeline exported here and run in SpikingJelly on real test images."""

from __future__ import annotations

import numpy as np
import pytest

from tests import nir_consumer, oracle
from tests.real_data import fashion_mnist_dir
from uticket_jax import configs, data, models, workload
from uticket_jax import pipeline as lth
from uticket_jax.interop import export_nir, import_nir, write_nir


def _sj_network():
    """conv 1->8 -> LIF -> conv 8->16 -> LIF -> avg-pool 2 -> flatten -> linear 256->10 (8x8 in),
    80 % of its weights pruned by global |w| (torch's own pruning utility)."""
    import torch
    from spikingjelly.activation_based import layer, neuron
    from torch.nn.utils import prune

    torch.manual_seed(0)
    lif = dict(tau=4.0 / 3.0, v_reset=0.0, detach_reset=True)
    net = torch.nn.Sequential(
        layer.Conv2d(1, 8, 3, padding=1, bias=False),
        neuron.LIFNode(**lif),
        layer.Conv2d(8, 16, 3, padding=1),
        neuron.LIFNode(**lif),
        layer.AvgPool2d(2),
        layer.Flatten(),
        layer.Linear(16 * 4 * 4, 10),
    )
    params = [(net[0], "weight"), (net[2], "weight"), (net[6], "weight")]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.8)
    for m, name in params:
        prune.remove(m, name)
    return net


def test_spikingjelly_export_imports_and_rebalances_like_the_oracle(tmp_path):
    nir_consumer.require_spikingjelly()
    import torch
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    net = _sj_network()
    path = str(tmp_path / "sj.nir")
    export_to_nir(net, torch.zeros(1, 1, 8, 8), save_path=path, dt=1.0)
    t = import_nir(path)
    conv0, conv1, fc = (net[i].weight.detach().numpy() for i in (0, 2, 6))
    assert list(t.masks) == list(t.nodes) and len(t.masks) == 3
    k0, k1, k2 = t.masks
    # Geometry from the graph: 8x8 convs, the classifier's rows in our HWC flatten order.
    assert [s.out_hw for s in t.specs] == [(8, 8), (8, 8), (1, 1)]
    assert [s.kernel_shape for s in t.specs] == [(3, 3, 1, 8), (3, 3, 8, 16), (1, 1, 256, 10)]
    assert [s.analysed for s in t.specs] == [False, True, False]
    np.testing.assert_array_equal(t.weights[k0][1, 2, 0, 5], conv0[5, 0, 1, 2])
    np.testing.assert_array_equal(t.masks[k1], conv1.transpose(2, 3, 1, 0) != 0)
    c, h, w = 3, 1, 2  # the classifier's input feature (channel c, row h, column w)
    np.testing.assert_array_equal(t.weights[k2][(h * 4 + w) * 16 + c], fc[:, c * 16 + h * 4 + w])
    assert 0.15 < sum(m.sum() for m in t.masks.values()) / sum(m.size for m in t.masks.values())
    new, report = workload.rebalance_network(
        t.masks, t.weights, n_pe=4, mapping="output_channel", backend="numpy"
    )
    rep = workload.report_to_json(report)
    want, loads, _ = oracle.rebalance(
        t.masks[k1], np.abs(t.weights[k1]), 4, "output_channel", "ceil_mean"
    )
    np.testing.assert_array_equal(new[k1], want)
    np.testing.assert_array_equal(new[k0], t.masks[k0])
    layer = rep["layers"][1]
    before = oracle.metrics_of(loads)
    after = oracle.metrics_of(oracle.loads_of(want, 4, "output_channel"))
    for key in ("utilization", "latency", "wasted", "dynamic"):
        assert layer["before"][key] == pytest.approx(before[key])
        assert layer["after"][key] == pytest.approx(after[key])
    assert before["utilization"] < 1.0 and after["utilization"] == 1.0


def _tiny_fashion_ticket():
    """A pipeline run on 1,000 Fashion-MNIST images: two dense epochs, one u-Ticket round at 60 %
    (rewound to epoch 1, retrains epoch 1), tested on the first 500 test images."""
    ds = data.load_dataset("fashion_mnist", data_dir=fashion_mnist_dir())
    ds = ds._replace(test_images=ds.test_images[:500], test_labels=ds.test_labels[:500])
    cfg = configs.get("fmnist").replace(
        train_subset=1000,
        epochs=2,
        rounds=1,
        rewind_epoch=1,
        arms=("uticket",),
        prune_percent=60.0,
        eval_every=2,
    )
    kept = {}

    def keep(record, masks, weights, records, rest):
        kept.update(record=record, masks=masks, weights=weights, rest=rest)

    lth.run(cfg, ds, on_stage_end=keep, progress=False, log=lambda line: None)
    flat = {f"params/{k}": v for k, v in kept["weights"].items()} | kept["rest"]
    variables = nir_consumer._nested({k: np.asarray(v) for k, v in flat.items()})
    model = models.get_model(cfg.arch, num_classes=10, timesteps=cfg.timesteps)
    masks = {k: np.asarray(v) for k, v in kept["masks"].items()}
    return model, variables, masks, ds.test_images, kept["record"]


@pytest.mark.slow
def test_fashion_mnist_ticket_runs_the_same_in_spikingjelly(tmp_path):
    nir_consumer.require_spikingjelly()
    model, variables, masks, images, record = _tiny_fashion_ticket()
    assert record.round == 1 and record.test_accuracy > 0.5
    layers = {f"features/conv{i}/kernel" for i in (1, 2, 3)} | {"classifier/kernel"}
    # --firing inclusive: SpikingJelly's update is ours (the strict default is checked on digits).
    path = str(tmp_path / "fmnist.nir")
    graph = export_nir(
        model, variables, masks, input_shape=(28, 28, 1), n_pe=16, firing="inclusive"
    )
    write_nir(path, graph)
    res = nir_consumer.compare(model, variables, masks, path, images)
    assert res["images"] == 500 and res["same_class_fraction"] >= 0.99, res
    nir_consumer.assert_agree(res["layers"], layers, 500)
