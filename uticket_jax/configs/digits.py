"""The `digits` preset (the default): the whole comparison on embedded data, no download.

  python experiments/lth.py                      # = --preset=digits, writes runs/lth_digits

Dense round + 11 rounds x 2 arms of 25 % global magnitude pruning on scikit-learn's 8x8 digits
with the small conv SNN (T = 4, 8 epochs per round, rewind to epoch 1), to 95.8 % sparsity
(0.75^11 of the weights left); 16 PEs per group, output-channel mapping, magnitude policy,
`ceil_mean` target, `sata` energy model. Runtime: minutes on 2 CPU cores (the measured times,
their machine and command: BUILD_NOTES.md, "The main job"). Result (BUILD_NOTES.md has the
tables): at round 11 LTH's PE utilization has fallen to 62.0 % (acc 97.2 %, 3.43e+04 cycles),
u-Ticket's stays at 100 % (acc 96.7 %, 2.534e+04 cycles): latency -26.1 %, energy -8.7 %
(on-chip -19.4 %, DRAM +2.8 %), activity-aware energy -9.0 %; under `--energy_model=horowitz45`
energy -3.1 %, activity-aware -25.4 %.
"""

from __future__ import annotations

from uticket_jax.pipeline.config import ARMS, LTHConfig


def get_config() -> LTHConfig:
    """The digits preset, every field set.

    Returns:
      The complete `LTHConfig`.
    """
    return LTHConfig(
        dataset="digits",
        train_subset=0,
        arch="digits_snn",
        timesteps=4,
        epochs=8,
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
        retrain="full",
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
        eval_batch_size=256,
        eval_every=1,
        trace_images=256,
    )
