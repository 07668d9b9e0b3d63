"""The `fmnist` preset: the comparison on real Fashion-MNIST (one of the paper's datasets) on CPU.

  apt-get install dataset-fashion-mnist          # the published IDX files, offline (Debian)
  python experiments/lth.py --preset=fmnist --workdir=runs/lth_fmnist

`fmnist_snn` (a VGG-style spiking net for 28x28x1: conv 16 -> pool -> conv 64 @14x14 -> pool ->
conv 64, conv 64 @7x7, BN + LIF after every conv, direct encoding, T = 4) trained on a fixed,
class-stratified subset of 15,000 of the 60,000 training images (evaluated on the whole 10,000
test images), a 3-epoch schedule, SGD momentum 0.9, lr 0.1, weight decay 5e-4, cosine; the
paper's IMP scaled to CPU: 11 rounds of 25 % global magnitude pruning (95.8 % sparsity), late
rewinding to epoch 1, and each pruning round retrains the rest of the schedule from there
(`retrain="rest"`: epochs 1 and 2, the cosine from epoch 1 on; the paper's code retrains all
epochs with a fresh schedule, `retrain="full"`, half as much training again); 16 PEs per group,
output-channel mapping, magnitude policy, `ceil_mean` target, `sata` energy model; the test set
once per stage.

Result (BUILD_NOTES.md, "Fashion-MNIST", has the table): dense 88.5 %; at round 11 (95.8 %)
LTH 86.5 % at 67.8 % PE utilization, u-Ticket 86.7 % at 100 %, latency -29.2 %. Runtime: under
an hour on 2 CPU cores (the measured times of this setting and of `--retrain=full`, with their
machines: BUILD_NOTES.md, "Fashion-MNIST").
"""

from __future__ import annotations

from uticket_jax.pipeline.config import ARMS, LTHConfig


def get_config() -> LTHConfig:
    """The fmnist preset, every field set.

    Returns:
      The complete `LTHConfig`.
    """
    return LTHConfig(
        dataset="fashion_mnist",
        train_subset=15000,
        arch="fmnist_snn",
        timesteps=4,
        epochs=3,
        batch_size=64,
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
        rounds=11,
        prune_percent=25.0,
        scope="global",
        prunable="conv_dense",
        rewind_epoch=1,
        retrain="rest",
        arms=ARMS,
        n_pe=16,
        mapping="output_channel",
        energy_model="sata",
        policy="magnitude",
        target="ceil_mean",
        et=False,
        et_candidates=(1, 2, 3),
        et_threshold=0.05,
        skip_first_layer=True,
        seed=0,
        eval_batch_size=500,
        eval_every=3,  # test-set accuracy and spike rates once per stage, after its last epoch
        trace_images=256,
    )
