"""The u-Ticket pipeline: lottery-ticket IMP with and without workload rebalancing, side by side.

Procedure (Frankle & Carbin 2019 with late rewinding, Frankle et al. 2020; u-Ticket: Yin et al.,
IEEE TETCI 2024, Alg. 1):
  round 0 ("dense"): train the dense SNN; keep the rewind point θ_k, the weights and BN
    statistics after `rewind_epoch` epochs (0 = the initialization).
  round r = 1..R, for each arm (`lth`, `uticket`), starting from that arm's round r-1:
    1. prune `prune_percent` % of the surviving weights by |w| of the trained weights
       (`global` or `layer` scope);
    2. u-Ticket arm only: rebalance the new masks so every PE of a group carries the same load
       (`workload.rebalance_network`; the magnitude policy scores with the same trained weights);
    3. rewind the surviving weights to θ_k, fresh optimizer, retrain `epochs` epochs.
  Both arms share round 0, the seed and the per-round batch order, so the comparison is paired.
  Optional early-time ticket (Kim et al., ECCV 2022): after round 0, the smallest `T` among
  `et_candidates` whose time-averaged output on one batch is within `et_threshold` of the full-`T`
  output (KL divergence normalized by log(classes)) is used by the search rounds 1..R-1; the final
  round R trains with the full `T`.

Every stage (round 0, then (round, arm) pairs) ends with a record: sparsity, accuracy, input spike
rates per layer, rebalance counts, and the PE-array simulator's figures for the configured
hardware (plain and activity-aware). The run is a pure function of its config and seed: it is
checkpointed after every epoch and every stage, and a resumed run ends with the same masks and
figures as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uticket_jax import data as data_lib
from uticket_jax import loop, models, pruning, workload
from uticket_jax import train as train_lib
from uticket_jax.checkpoint import Checkpointer
from uticket_jax.hardware import config as hw_config
from uticket_jax.hardware import simulator
from uticket_jax.hardware.tables import specs_from_layers
from uticket_jax.masks import flatten, make_masks, sparsity_report, unflatten
from uticket_jax.spikes import input_spike_rates

ARMS = ("lth", "uticket")
PRUNABLE = ("conv_dense", "conv")


@dataclasses.dataclass(frozen=True)
class LTHConfig:
    """Everything that defines a run (the launcher's flags after presets).

    `train_subset`: train on a fixed, class-stratified subset of that many training images
    (`data.take_train_subset`, seed `data.SUBSET_SEED`); 0 trains on all of them. The test set
    is always the whole one.
    """

    dataset: str = "digits"
    train_subset: int = 0
    arch: str = "digits_snn"
    timesteps: int = 4
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    rounds: int = 11
    prune_percent: float = 25.0
    scope: str = "global"
    prunable: str = "conv_dense"
    rewind_epoch: int = 1
    arms: tuple[str, ...] = ARMS
    n_pe: int = 16
    mapping: str = "output_channel"
    policy: str = "magnitude"
    target: str = "ceil_mean"
    et: bool = False
    et_candidates: tuple[int, ...] = (1, 2, 3)
    et_threshold: float = 0.05
    skip_first_layer: bool = True
    seed: int = 0
    eval_batch_size: int = 256

    def validate(self) -> None:
        """Raises ValueError naming the field (as its flag) when a value is out of range."""
        for name in ("timesteps", "epochs", "batch_size", "rounds", "n_pe", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name}: must be a positive integer, got {getattr(self, name)}")
        if self.train_subset < 0:
            raise ValueError(
                f"--train_subset: must be >= 0 (0: the whole training set), got {self.train_subset}"
            )
        if not 0.0 < self.prune_percent < 100.0:
            raise ValueError(f"--prune_percent: must be in (0, 100), got {self.prune_percent}")
        if not 0 <= self.rewind_epoch < self.epochs:
            raise ValueError(
                f"--rewind_epoch: must be in [0, --epochs={self.epochs}), got {self.rewind_epoch}"
            )
        if not self.arms or any(a not in ARMS for a in self.arms):
            raise ValueError(f"--arms: {','.join(self.arms)!r}; allowed: lth, uticket, or both")
        if self.prunable not in PRUNABLE:
            raise ValueError(f"--prunable: unknown {self.prunable!r}; allowed: {PRUNABLE}")
        if self.et and (not self.et_candidates or min(self.et_candidates) <= 0):
            raise ValueError("--et_candidates: need positive timesteps")
        if self.et_threshold <= 0:
            raise ValueError(f"--et_threshold: must be > 0, got {self.et_threshold}")
        choices = {
            "dataset": data_lib.DATASET_NAMES,
            "arch": models.MODEL_NAMES,
            "optimizer": train_lib.OPTIMIZERS,
            "schedule": train_lib.SCHEDULES,
            "scope": pruning.SCOPES,
            "mapping": hw_config.MAPPINGS,
            "policy": workload.POLICIES,
            "target": workload.TARGETS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"--{name}: unknown {getattr(self, name)!r}; allowed: {', '.join(allowed)}"
                )

    def stages(self) -> list[tuple[int, str]]:
        """`(round, arm)` of every stage in run order; round 0's arm is `dense`."""
        return [(0, "dense")] + [(r, a) for r in range(1, self.rounds + 1) for a in self.arms]


class Stage(NamedTuple):
    """One stage of the run: its index, round, arm and the timesteps it trains with."""

    index: int
    round: int
    arm: str
    timesteps: int


def stage_at(cfg: LTHConfig, index: int, et_timesteps: int | None) -> Stage:
    """The stage at `index`; search rounds (1..R-1) use the early-time `T` when one was chosen."""
    rnd, arm = cfg.stages()[index]
    search = et_timesteps is not None and 0 < rnd < cfg.rounds
    return Stage(index, rnd, arm, et_timesteps if search else cfg.timesteps)


def _prunable_rule(cfg: LTHConfig) -> Callable[[str, Any], bool]:
    ranks = (2, 4) if cfg.prunable == "conv_dense" else (4,)
    return lambda path, leaf: path.endswith("/kernel") and np.ndim(leaf) in ranks


def _order(flat: dict, order: list[str]) -> dict:
    return {k: flat[k] for k in order}


def choose_et_timesteps(
    cfg: LTHConfig, variables, dataset, model_for: Callable[[int], Any]
) -> dict[str, Any]:
    """Early-time ticket: the smallest candidate `T` whose output stays close to the full `T`'s.

    Closeness on the first `eval_batch_size` test images: mean KL(p_full || p_T) / log(classes),
    with p the softmax of the time-averaged logits.

    `model_for(t)` returns the run's model at `t` steps (one cached instance per `t`).
    """
    x = jnp.asarray(dataset.test_images[: cfg.eval_batch_size])

    def probs(t):
        logits = model_for(t).apply(variables, x, train=False)  # [t, B, classes]
        return jax.nn.log_softmax(logits.mean(0), -1)

    full = probs(cfg.timesteps)
    divergences = {}
    for t in sorted(set(cfg.et_candidates)):
        if t >= cfg.timesteps:
            continue
        lp = probs(t)
        kl = jnp.sum(jnp.exp(full) * (full - lp), -1).mean() / jnp.log(dataset.num_classes)
        divergences[t] = float(kl)
    chosen = next((t for t, d in divergences.items() if d <= cfg.et_threshold), cfg.timesteps)
    return {"timesteps": chosen, "normalized_kl": divergences, "threshold": cfg.et_threshold}


def next_masks(
    cfg: LTHConfig,
    stage: Stage,
    previous: dict[str, Any],
    order: list[str],
    *,
    like: Any,
    key: jax.Array,
) -> tuple[dict[str, Any], dict[str, int] | None]:
    """One IMP step of an arm: prune its previous masks, and rebalance them in the u-Ticket arm.

    Args:
      cfg: the run's configuration (pruning and rebalance settings).
      stage: the stage being set up (its arm decides whether to rebalance).
      previous: `{"masks": flat masks, "trained": params}` of the arm's previous round.
      order: prunable layer paths in network order.
      like: a params tree giving the structure for the mask tree.
      key: key of the random rebalance policy.

    Returns:
      `(masks_flat, rebalance_counts)`: the new flat masks in network order, and for the
      u-Ticket arm the total `regrown`, `dropped` and capacity-`capped` counts (else None).
    """
    trained = previous["trained"]
    masks_tree = unflatten(previous["masks"], like)
    pruned = pruning.prune_magnitude(trained, masks_tree, cfg.prune_percent, scope=cfg.scope)
    masks_flat = _order(flatten(pruned), order)
    if stage.arm != "uticket":
        return masks_flat, None
    masks_flat, report = workload.rebalance_network(
        masks_flat,
        _order(flatten(trained), order),
        n_pe=cfg.n_pe,
        mapping=cfg.mapping,
        policy=cfg.policy,
        target=cfg.target,
        key=key,
        skip_first=cfg.skip_first_layer,
    )
    counts = {
        k: sum(int(getattr(r, k)) for r in report.layers) for k in ("regrown", "dropped", "capped")
    }
    return masks_flat, counts


def _hardware(cfg, specs, masks_flat, rates) -> dict[str, Any]:
    """Simulator figures at the run's full T (so every round is costed for the deployed net)."""
    configs = hw_config.config_grid(
        n_pe=[cfg.n_pe],
        mapping=[cfg.mapping],
        timesteps=[cfg.timesteps],
        activity_aware=[False, True],
    )
    res = simulator.simulate_masks(masks_flat, specs, configs, spike_rates=rates)
    return {
        "network": simulator.figures_dict(res.network, 0),
        "activity_aware": simulator.figures_dict(res.network, 1),
        "layers": [
            {"name": s.name, "analysed": s.analysed, **simulator.figures_dict(res.layers, 0, j)}
            for j, s in enumerate(specs)
        ],
    }


def run(
    cfg: LTHConfig,
    dataset: data_lib.Dataset,
    *,
    checkpointer: Checkpointer | None = None,
    on_stage_end: Callable[[dict[str, Any], dict[str, Any], dict[str, Any], list[dict]], None]
    | None = None,
    dp: loop.DataParallel | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Runs (or resumes, when `checkpointer` holds a checkpoint) the whole comparison.

    Args:
      cfg: the run's configuration (validated here).
      dataset: the data (the whole training set: `cfg.train_subset` is taken here).
      checkpointer: where to save after every epoch and stage; a run resumes from its newest
        checkpoint. None: no checkpoints.
      on_stage_end: `f(record, masks_flat, weights_flat, records_so_far)` after each stage, before
        its checkpoint, with the stage's masks and trained kernels of the prunable layers in
        network order (the launcher writes files there; it must be idempotent).
      dp: data-parallel shardings (default: all devices).
      progress: progress bars.
      log: where the one-line stage summaries go.

    Returns:
      One record per stage, in run order.
    """
    cfg.validate()
    dataset = data_lib.take_train_subset(dataset, cfg.train_subset)
    dp = loop.data_parallel() if dp is None else dp
    loop.check_batch_size(cfg.batch_size, dataset.train_images.shape[0], dp)
    num_classes = dataset.num_classes
    base_key = jax.random.key(cfg.seed)
    init_key, data_key, rebalance_key = jax.random.split(base_key, 3)
    steps_per_epoch = data_lib.num_batches(dataset.train_images.shape[0], cfg.batch_size)
    # One optimizer and one model per T for the whole run: jit caches on these static fields,
    # so every stage reuses the compiled train and eval steps.
    tx = train_lib.make_optimizer(
        cfg.optimizer,
        lr=cfg.lr,
        total_steps=cfg.epochs * steps_per_epoch,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        schedule=cfg.schedule,
    )
    model_for = functools.cache(
        lambda t: models.get_model(cfg.arch, num_classes=num_classes, timesteps=t)
    )

    full_model = model_for(cfg.timesteps)
    variables = loop.init_variables(full_model, dataset.image_shape, init_key)
    mask_tree = make_masks(variables["params"], _prunable_rule(cfg))
    prunable = flatten(mask_tree)
    infos = models.describe_layers(full_model, (1, *dataset.image_shape))
    infos = [i for i in infos if i.path in prunable]  # network order
    order = [i.path for i in infos]
    specs = specs_from_layers(infos, skip_first=cfg.skip_first_layer)

    def fresh_state(model, params_vars, masks):
        return train_lib.create_train_state(model.apply, params_vars, tx, masks)

    def arrays_of(state):
        return {k: getattr(state, k) for k in ("step", "params", "batch_stats", "opt_state")}

    dense_flat = _order(flatten(mask_tree), order)
    template_state = fresh_state(full_model, variables, mask_tree)
    carry = {
        "train": arrays_of(template_state),
        "rewind": {"params": variables["params"], "batch_stats": variables["batch_stats"]},
        "arms": {a: {"masks": dense_flat, "trained": variables["params"]} for a in cfg.arms},
    }
    meta = {"stage": 0, "epoch": 0, "history": [], "records": [], "et": None, "saves": 0}
    if checkpointer is not None and checkpointer.latest_step() is not None:
        carry, meta = checkpointer.restore(carry)
        log(
            f"resumed from checkpoint {meta['saves']}: stage {meta['stage']}, epoch {meta['epoch']}"
        )

    def save():
        if checkpointer is not None:
            meta["saves"] += 1
            checkpointer.save(meta["saves"], carry, meta)

    stages = cfg.stages()
    while meta["stage"] < len(stages):
        et_t = meta["et"]["timesteps"] if meta["et"] else None
        stage = stage_at(cfg, meta["stage"], et_t)
        model = model_for(stage.timesteps)
        if stage.arm == "dense":
            masks_flat, rebalance_info = dense_flat, None
        else:
            masks_flat, rebalance_info = next_masks(
                cfg,
                stage,
                carry["arms"][stage.arm],
                order,
                like=variables["params"],
                key=jax.random.fold_in(rebalance_key, stage.round),
            )
        masks_tree = unflatten(masks_flat, variables["params"])
        if meta["epoch"] == 0:
            start_vars = variables if stage.arm == "dense" else carry["rewind"]
            state = fresh_state(model, start_vars, masks_tree)
            meta["history"] = []
            meta["stage_seconds"] = 0.0
        else:
            state = fresh_state(model, variables, masks_tree).replace(**carry["train"])
        t0 = time.perf_counter()

        def on_epoch_end(epoch, st, record, stage=stage):
            nonlocal t0
            if stage.arm == "dense" and epoch + 1 == cfg.rewind_epoch:
                carry["rewind"] = {"params": st.params, "batch_stats": st.batch_stats}
            carry["train"] = arrays_of(st)
            meta["epoch"] = epoch + 1
            meta["history"].append(record)
            meta["stage_seconds"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            save()

        state, _ = loop.fit(
            state,
            dataset,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            key=jax.random.fold_in(data_key, stage.round),
            dp=dp,
            start_epoch=meta["epoch"],
            eval_batch_size=cfg.eval_batch_size,
            on_epoch_end=on_epoch_end,
            desc=f"round {stage.round} {stage.arm}",
            progress=progress,
        )
        trained_vars = {"params": state.params, "batch_stats": state.batch_stats}
        if stage.arm == "dense":
            for a in cfg.arms:
                carry["arms"][a] = {"masks": dense_flat, "trained": state.params}
            if cfg.et:
                meta["et"] = choose_et_timesteps(cfg, trained_vars, dataset, model_for)
        else:
            carry["arms"][stage.arm] = {"masks": masks_flat, "trained": state.params}
        rates = input_spike_rates(
            model, trained_vars, dataset.test_images, batch_size=cfg.eval_batch_size
        )
        history = meta["history"]
        sparsity = sparsity_report(masks_flat)
        record = {
            "round": stage.round,
            "arm": stage.arm,
            "timesteps": stage.timesteps,
            "train_images": int(dataset.train_images.shape[0]),
            "sparsity": sparsity["global"],
            "layer_sparsity": sparsity["layers"],
            "test_accuracy": history[-1]["test_accuracy"],
            "best_test_accuracy": max(h["test_accuracy"] for h in history),
            "train_loss": history[-1]["train_loss"],
            "spike_rates": {k: rates[k] for k in order if k in rates},
            "rebalance": rebalance_info,
            "hardware": _hardware(cfg, specs, masks_flat, rates),
            "et": meta["et"] if stage.arm == "dense" else None,
            "seconds": meta["stage_seconds"] + (time.perf_counter() - t0),
        }
        meta["records"].append(record)
        hw = record["hardware"]["network"]
        log(
            f"round {stage.round:2d} {stage.arm:8s} T={stage.timesteps} sparsity"
            f" {100 * record['sparsity']:6.2f}% acc {100 * record['test_accuracy']:6.2f}%"
            f" util {_pct(hw['utilization'])} latency {hw['cycles']:.4g} cyc"
            f" energy {hw['energy_total']:.4g} J ({record['seconds']:.1f} s)"
        )
        if on_stage_end is not None:
            weights_flat = _order(flatten(state.params), order)
            on_stage_end(record, masks_flat, weights_flat, meta["records"])
        meta["stage"] += 1
        meta["epoch"] = 0
        save()
    return meta["records"]


def _pct(x: float | None) -> str:
    return "   n/a" if x is None else f"{100 * x:5.1f}%"
