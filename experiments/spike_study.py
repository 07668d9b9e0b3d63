r"""How much of u-Ticket's latency and energy cut survives when the PEs skip zero spikes.

  python experiments/spike_study.py --workdir runs/lth_digits --out runs/lth_digits/spike_study

For every pruning round of an `experiments/lth.py` run (or those given by --rounds), rebuilds the
round's LTH and u-Ticket tickets from the run directory (as `experiments/trace.py` does), records
each ticket's analysed-layer inputs on the first --images test images at the run's `T`, and prices
both tickets weight-only and spike-driven (`hardware.price_ticket`) for every --n_pe x --mapping.
Writes to --out:

  study.json, study.csv   one row per (round, config, layer | network): the latency and energy
                          cut of u-Ticket over LTH weight-only and spike-driven, the share that
                          survives (`hardware.cuts`), both tickets' utilizations
  cuts_by_round.png       the network latency and energy cuts per round, weight-only and
                          spike-driven, at the run's own n_pe and mapping
  survival_vs_npe.png     the share of the latency cut that survives, last round, per mapping

Prints one line per round. Bad input (not a run directory, a round the run does not have, a run
written without weights or variables, bad flags, an existing --out without --overwrite): one line
on stderr, exit status 2, nothing written.
"""

from __future__ import annotations

import json
import os

from absl import flags

from uticket_jax import checks, data, files, hardware, models
from uticket_jax.launch import cli, plots, results

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's work directory (experiments/lth.py).")
_OUT = flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/spike_study).")
_ROUNDS = flags.DEFINE_string("rounds", None, "Comma list of rounds (default: every round >= 1).")
_N_PE = flags.DEFINE_string("n_pe", "4,8,16,32,64", "Comma list of PEs per group.")
_MAPPING = flags.DEFINE_string("mapping", "output_channel,input_split", "Comma list of mappings.")
_IMAGES = flags.DEFINE_integer("images", 256, "Test images to record per ticket (the first N).")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Images per forward pass.")
_MODEL = flags.DEFINE_string("energy_model", None, "Energy model (default: the run's).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset files of the run's dataset.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --out directory's files.")


def _check_flags() -> dict:
    if not _WORKDIR.value:
        raise ValueError("--workdir: required (the run's work directory)")
    if not os.path.isfile(os.path.join(_WORKDIR.value, "rounds.jsonl")):
        raise ValueError(f"--workdir: {_WORKDIR.value!r} holds no rounds.jsonl (not a run)")
    out = _OUT.value or os.path.join(_WORKDIR.value, "spike_study")
    if os.path.exists(os.path.join(out, "study.json")) and not _OVERWRITE.value:
        raise ValueError(f"--out: {out!r} holds a study; pass --overwrite to replace it")
    checks.check_int("--images", _IMAGES.value, minimum=1)
    checks.check_int("--batch_size", _BATCH.value, minimum=1)
    mappings = [m for m in _MAPPING.value.split(",") if m]
    for m in mappings:
        if m not in hardware.MAPPINGS:
            raise ValueError(f"--mapping: unknown {m!r}; allowed: {', '.join(hardware.MAPPINGS)}")
    rounds = None if _ROUNDS.value is None else cli.int_list(_ROUNDS)
    return {"out": out, "rounds": rounds, "n_pe": cli.int_list(_N_PE), "mappings": mappings}


def _run_rounds(workdir: str) -> list[int]:
    """The pruning rounds of a run that have both arms, from its rounds.jsonl."""
    path = os.path.join(workdir, "rounds.jsonl")
    seen: dict[int, set] = {}
    try:
        with open(path) as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    seen.setdefault(int(rec["round"]), set()).add(rec["arm"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--workdir: cannot read {path!r} ({e})") from None
    return sorted(r for r, arms in seen.items() if {"lth", "uticket"} <= arms)


def _price_round(workdir, rnd, opts, test, energy_model):
    """Both tickets of round `rnd` priced, with their configs and specs."""
    from uticket_jax.interop import load_run_ticket, record_run_trace

    priced, specs, configs = {}, None, None
    for arm in ("lth", "uticket"):
        ticket = load_run_ticket(workdir, rnd, arm)
        trace = record_run_trace(ticket, test, batch_size=_BATCH.value)
        layers = models.describe_layers(ticket.model, ticket.input_shape)
        infos = [i for i in layers if i.path in ticket.masks]
        specs = hardware.specs_from_layers(
            infos, skip_first=bool(ticket.config.get("skip_first_layer", True))
        )
        model = hardware.get_energy_model(energy_model or ticket.config["energy_model"])
        t = int(next(iter(trace.values())).shape[0])
        configs = hardware.config_grid(
            n_pe=opts["n_pe"], mapping=opts["mappings"], timesteps=t, clock_hz=model.clock_hz
        )
        priced[arm] = hardware.price_ticket(ticket.masks, trace, specs, configs, energy_model=model)
    return priced, specs, configs, ticket.config


def _plots(rows, out, run_cfg) -> list[str]:
    net = [r for r in rows if r["layer"] == "network"]
    own = [
        r
        for r in net
        if r["config"]["n_pe"] == run_cfg["n_pe"] and r["config"]["mapping"] == run_cfg["mapping"]
    ]
    x = [r["round"] for r in own]
    series = {
        f"{name} cut, {how}": (x, [r[f"{name}_cut_{how}"] for r in own])
        for name in ("latency", "energy")
        for how in ("weights", "spikes")
    }
    fig = plots.new_figure()
    paths = [
        plots.line_plot(
            os.path.join(out, "cuts_by_round.png"),
            series,
            xlabel="round",
            ylabel="u-Ticket's cut over LTH (fraction)",
            figure=fig,
            title=f"{run_cfg['mapping']}, {run_cfg['n_pe']} PEs: weight-only vs spike-driven",
        )
    ]
    last = max(r["round"] for r in net)
    by_map = {}
    for r in net:
        if r["round"] == last:
            by_map.setdefault(r["config"]["mapping"], []).append(r)
    series = {
        f"{m}: {name}": ([r["config"]["n_pe"] for r in rs], [r[f"{name}_survives"] for r in rs])
        for m, rs in by_map.items()
        for name in ("latency", "energy")
    }
    paths.append(
        plots.line_plot(
            os.path.join(out, "survival_vs_npe.png"),
            series,
            xlabel="PEs per group",
            ylabel="spike-driven cut / weight-only cut",
            logx=True,
            figure=fig,
            title=f"round {last}: share of u-Ticket's cut that survives zero-spike skipping",
        )
    )
    return paths


def main() -> None:
    opts = _check_flags()
    workdir = _WORKDIR.value
    rounds = _run_rounds(workdir)
    wanted = rounds if opts["rounds"] is None else opts["rounds"]
    missing = sorted(set(wanted) - set(rounds))
    if missing or not wanted:
        raise ValueError(f"--rounds: the run has rounds {rounds} with both arms, not {missing}")
    run_cfg = files.read_json(os.path.join(workdir, "config.json"), "--workdir")
    dataset = data.load_dataset(run_cfg["dataset"], data_dir=_DATA_DIR.value)
    test = dataset.test_images[: _IMAGES.value]
    rows = []
    for rnd in wanted:
        priced, specs, configs, run_cfg = _price_round(workdir, rnd, opts, test, _MODEL.value)
        new = hardware.cut_rows(priced["uticket"], priced["lth"], configs, specs)
        rows += [{"round": rnd} | r for r in new]
        own = [
            r
            for r in new
            if r["layer"] == "network"
            and (r["config"]["n_pe"], r["config"]["mapping"])
            == (run_cfg["n_pe"], run_cfg["mapping"])
        ]
        for r in own:
            print(
                f"round {rnd}: latency cut {r['latency_cut_weights']:.1%} weight-only, "
                f"{r['latency_cut_spikes']:.1%} spike-driven; energy cut "
                f"{r['energy_cut_weights']:.1%} / {r['energy_cut_spikes']:.1%} "
                f"({run_cfg['mapping']}, {run_cfg['n_pe']} PEs)",
                flush=True,
            )
    os.makedirs(opts["out"], exist_ok=True)
    results.write_json(os.path.join(opts["out"], "study.json"), rows)
    flat = [
        {
            "round": r["round"],
            **r["config"],
            **{k: v for k, v in r.items() if k not in ("round", "config")},
        }
        for r in rows
    ]
    results.write_csv(os.path.join(opts["out"], "study.csv"), flat)
    for p in _plots(rows, opts["out"], run_cfg):
        print(f"wrote {p}")


if __name__ == "__main__":
    cli.run(main, name="spike_study.py")
