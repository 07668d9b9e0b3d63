r"""Hardware sweep: latency, utilization and energy of masks over a grid of PE-array configs.

Example (a u-Ticket ticket against its LTH ticket, both mappings, 5 array sizes; ~2 s on CPU):
  python experiments/sweep.py --masks runs/uticket/masks.npz --compare runs/lth/masks.npz \
      --n_pe 4,8,16,32,64 --mapping output_channel,input_split --timesteps 5 --input_size 32 \
      --out runs/sweep
Energy constants sweep too: each flag takes a comma list (the grid is their product).
`--energy_model NAME` picks the energy model (`hardware.energy`: horowitz45, the default, or
sata, SATA_Sim's published model); every model's constants have flags generated the same way
(horowitz45: `--e_acc_pj --e_fetch_pj --e_idle_pj --leak_uw`; sata: `--mac_op_mw ... --dram_nj`,
see `--helpfull`), `--grid` expands each constant given with one value to x{1/4, 1/2, 1, 2, 4}
(all four of horowitz45's: 625 variants), and `--clock_mhz` defaults to the model's clock
(500 / 400 MHz).
Writes DIR/sweep.json, DIR/sweep.csv, DIR/{latency,energy,utilization}.png; prints a table.
`--compare dense` compares with the all-ones masks of the same layers.
A NIR graph (any framework's export, or experiments/export.py's) can stand in for a masks file:
  python experiments/sweep.py --masks ticket.nir --compare dense --n_pe 16 --out runs/sweep_nir
its masks are the non-zero pattern of its conv and dense weights and its layer sizes come from
the graph, so --model, --input_size, --out_sizes and --arch are not needed (and refused).
`--backend numpy` (the default) evaluates the simulator on the host and compiles nothing: a whole
run of one VGG16 masks file x 100 configs takes ~1.8 s on a 2-core CPU, JAX's import included
(`--backend jax`: ~6 s, most of it compiling; even 80,000 configs take 0.3 s with numpy). A
`--distributed` run shards the configs over every process's devices and needs `--backend jax`
(its default there).
"""

from __future__ import annotations

from uticket_jax.launch import signals

signals.install("sweep.py", __name__)  # before the heavy imports: a Ctrl-C there is one line

import csv
import io
import json
import os

import numpy as np
from absl import flags

from uticket_jax import checks, files, hardware
from uticket_jax.hardware import energy
from uticket_jax.launch import cli, distributed, lock, plots
from uticket_jax.launch import workdir as workdirs
from uticket_jax.sparsity.masks import LAYOUTS, load_mask_file

_MASKS = flags.DEFINE_string(
    "masks", None, "Mask .npz file (one array per prunable layer), or a NIR graph (.nir)."
)
_LAYOUT = flags.DEFINE_string("layout", "hwio", f"Layout of the mask files: {', '.join(LAYOUTS)}.")
_COMPARE = flags.DEFINE_string(
    "compare", None, "Baseline mask .npz or NIR graph (or 'dense') for ratios."
)
_N_PE = flags.DEFINE_string("n_pe", "4,8,16,32,64", "Comma list of PEs per group.")
_MAPPING = flags.DEFINE_string(
    "mapping", "output_channel,input_split", f"Comma list of: {', '.join(hardware.MAPPINGS)}."
)
_SKIP_FIRST = flags.DEFINE_bool("skip_first_layer", True, "Leave the first conv out (paper).")
_CONV_ONLY = flags.DEFINE_bool("conv_only", True, "Analyse conv layers only (paper).")
_TIMESTEPS = flags.DEFINE_string("timesteps", "5", "Comma list of SNN time steps T.")
_INPUT_SIZE = flags.DEFINE_integer("input_size", 32, "Input height = width (derives out sizes).")
_OUT_SIZES = flags.DEFINE_string(
    "out_sizes",
    None,
    "Comma list of output sizes (H = W), one per layer in file order; overrides derivation.",
)
_ARCH = flags.DEFINE_string("arch", "auto", "Output-size rule: auto, vgg or resnet.")
_MODEL = flags.DEFINE_string(
    "model", None, "Take exact output sizes from this project model (e.g. digits_snn, vgg16)."
)
_RATES = flags.DEFINE_string(
    "spike_rates",
    None,
    "JSON {layer_path: input spike rate in [0, 1]}; turns on activity-aware accumulate energy.",
)
_SPIKE_TRACE = flags.DEFINE_string(
    "spike_trace",
    None,
    "Recorded layer inputs .npz (one array per analysed layer, keyed by kernel path: "
    "[T, B, H, W, C_in] convs, [T, B, C_in] dense; bool or 0/1): spike-driven figures "
    "(hardware.simulate_spikes; rows marked workload=spikes). --timesteps defaults to its T.",
)
_CLOCK = flags.DEFINE_string(
    "clock_mhz", None, "Comma list of clock frequencies, MHz (default: the energy model's)."
)
_ENERGY_MODEL = flags.DEFINE_string(
    "energy_model", "horowitz45", f"Energy model: {', '.join(energy.ENERGY_MODELS)}."
)
_GRID = flags.DEFINE_bool(
    "grid", False, "Expand each energy constant given with one value to x{1/4,1/2,1,2,4}."
)
# One comma-list flag per constant of every registered model (value x scale = constant).
_MODEL_FLAGS = {
    name: {
        f.flag: flags.DEFINE_string(
            f.flag,
            f"{getattr(model.defaults, f.field) / f.scale:.7g}",
            f"Comma list ({name}): {f.help}.",
        )
        for f in model.constant_flags()
    }
    for name, model in energy.ENERGY_MODELS.items()
}
_BACKEND = flags.DEFINE_string(
    "backend",
    None,
    "Simulator backend: numpy (on the host, nothing compiled; the default) or jax (compiled; the "
    "default with --distributed, the only one there).",
)
_LAYER_ROWS = flags.DEFINE_bool("layer_rows", True, "Per-layer figures in sweep.json.")
_MAX_PRINT = flags.DEFINE_integer("print_rows", 40, "Table rows printed (0: none).")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace an earlier sweep in --out (it moves to OUT/replaced-<time>/)."
)

GRID_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


def _floats(flag, scale: float = 1.0, grid: bool = False) -> list[float]:
    try:
        vals = [float(v) * scale for v in flag.value.split(",") if v.strip()]
    except ValueError:
        msg = f"--{flag.name}: expected a comma list of numbers, got {flag.value!r}"
        raise ValueError(msg) from None
    if not vals or not all(np.isfinite(vals)):
        raise ValueError(f"--{flag.name}: expected finite numbers, got {flag.value!r}")
    if any(v < 0 for v in vals):
        raise ValueError(f"--{flag.name}: must be >= 0, got {flag.value!r}")
    return [v * s for v in vals for s in GRID_SCALES] if grid and len(vals) == 1 else vals


def _energy_model() -> energy.EnergyModel:
    """The chosen model; refuses another model's constant flags."""
    if _ENERGY_MODEL.value not in energy.ENERGY_MODELS:
        raise ValueError(
            f"--energy_model: unknown {_ENERGY_MODEL.value!r}; "
            f"allowed: {', '.join(energy.ENERGY_MODELS)}"
        )
    model = energy.ENERGY_MODELS[_ENERGY_MODEL.value]
    for name, fl in _MODEL_FLAGS.items():
        given = [f"--{k}" for k, v in fl.items() if v.present and name != model.name]
        if given:
            raise ValueError(
                f"{given[0]}: a constant of energy model {name}, not of --energy_model "
                f"{model.name}; its constants: "
                + ", ".join(f"--{f.flag}" for f in model.constant_flags())
            )
    return model


def _constants(model: energy.EnergyModel):
    """The model's constants grid `[M]` from its flags (`--grid` expands the ones given)."""
    fl = _MODEL_FLAGS[model.name]
    given = [f for f in model.constant_flags() if fl[f.flag].present]
    if _GRID.value and not given:
        raise ValueError(
            f"--grid: give the constants of --energy_model {model.name} to expand "
            f"(e.g. --{model.constant_flags()[0].flag})"
        )
    lists = {
        f.field: _floats(fl[f.flag], f.scale, grid=_GRID.value and f in given)
        for f in model.constant_flags()
    }
    return energy.constants_grid(model, **lists)


def _configs(trace_t: int | None = None):
    """The configs `[N]` (config-major, then the energy constants), the model and its constants
    (`[N]` leaves); with a spike trace of `trace_t` steps, `--timesteps` must be (or becomes) it."""
    mappings = [m.strip() for m in _MAPPING.value.split(",") if m.strip()]
    for m in mappings:
        if m not in hardware.MAPPINGS:
            raise ValueError(f"--mapping: unknown {m!r}; allowed: {', '.join(hardware.MAPPINGS)}")
    if not mappings:
        raise ValueError("--mapping: give at least one mapping")
    model = _energy_model()
    if _CLOCK.value is None:
        clocks = [model.clock_hz]
    else:
        clocks = _floats(_CLOCK, 1e6)
    if min(clocks) <= 0:
        raise ValueError(f"--clock_mhz: must be > 0, got {_CLOCK.value!r}")
    configs = hardware.config_grid(
        n_pe=cli.int_list(_N_PE),
        mapping=mappings,
        timesteps=_timesteps(trace_t),
        clock_hz=clocks,
        activity_aware=[_RATES.value is not None],
    )
    consts = _constants(model)
    n, m = hardware.num_configs(configs), len(consts[0])
    configs = hardware.take_configs(configs, np.repeat(np.arange(n), m))  # config-major
    return configs, model, type(consts)(*(np.tile(c, n) for c in consts))


def _timesteps(trace_t: int | None) -> list[int]:
    """--timesteps, or the spike trace's T (which a given --timesteps must equal)."""
    if trace_t is None:
        return cli.int_list(_TIMESTEPS)
    if _TIMESTEPS.present and cli.int_list(_TIMESTEPS) != [trace_t]:
        raise ValueError(
            f"--timesteps: {_TIMESTEPS.value!r} differs from the --spike_trace's T = {trace_t}"
        )
    return [trace_t]


def _spike_trace(masks: dict, specs) -> dict | None:
    """The --spike_trace inputs checked against the layers (None without the flag)."""
    if not _SPIKE_TRACE.value:
        return None
    for fl in (_RATES, distributed.DISTRIBUTED):
        if fl.value:
            raise ValueError(
                f"--{fl.name}: not with --spike_trace (the trace is the activity; one host)"
            )
    what = f"--spike_trace: {_SPIKE_TRACE.value!r}"
    arrays = files.read_npz(_SPIKE_TRACE.value, "--spike_trace", ranks=(3, 5))
    return hardware.check_spikes(arrays, specs, what)


def _backend() -> str:
    """The simulator backend: `--backend`, else numpy (jax in a `--distributed` run)."""
    dist = distributed.DISTRIBUTED.value
    if _BACKEND.value is None:
        return "jax" if dist else "numpy"
    if _BACKEND.value not in hardware.BACKENDS:
        raise ValueError(
            f"--backend: unknown {_BACKEND.value!r}; allowed: {', '.join(hardware.BACKENDS)}"
        )
    if dist and _BACKEND.value != "jax":
        raise ValueError(
            f"--backend: {_BACKEND.value} runs on one host; a --distributed run shards its "
            "configs over every process's devices with --backend jax"
        )
    return _BACKEND.value


_HELD: list[lock.WorkdirLock] = []  # the --out lock, held until the process ends


def _prepare_out(path: str) -> None:
    """--out checked, created and locked; an earlier sweep there set aside (--overwrite)."""
    path, _ = workdirs.prepare(path, workdirs.SWEEP, flag="--out", overwrite=_OVERWRITE.value)
    held = lock.acquire(path, flag="--out")
    _HELD.append(held)
    moved = workdirs.set_aside(path)
    if moved:
        print(f"--overwrite: moved the earlier sweep to {moved}")


def _write_atomic(path: str, text: str) -> None:
    files.write_text(path, text)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def _table(rows: list[dict], limit: int) -> str:
    head = ["masks", "mapping", "n_pe", "T", "util", "util_norm", "cycles", "seconds", "energy_J"]
    has_ratio = any("vs_baseline" in r for r in rows)
    head += ["lat_ratio", "energy_ratio"] if has_ratio else []
    lines = [head]
    for r in rows[:limit]:
        c, n = r["config"], r["network"]
        line = [os.path.basename(r["masks"]), c["mapping"], str(c["n_pe"]), str(c["timesteps"])]
        line += [_fmt(n[k]) for k in ("utilization", "utilization_normalized", "cycles", "seconds")]
        line.append(_fmt(n["energy_total"]))
        if has_ratio:
            vs = r.get("vs_baseline")
            line += [_fmt(vs["seconds"]), _fmt(vs["energy_total"])] if vs else ["", ""]
        lines.append(line)
    widths = [max(len(x[i]) for x in lines) for i in range(len(head))]
    text = "\n".join("  ".join(x.ljust(w) for x, w in zip(ln, widths, strict=True)) for ln in lines)
    more = len(rows) - limit
    return text + (f"\n... {more} more rows in sweep.csv" if more > 0 else "")


def _model_specs(masks: dict) -> list[hardware.LayerSpec]:
    """Layer descriptions from the project's model of that name, checked against the masks."""
    from uticket_jax import models  # imported on demand: flax is only needed here

    if _MODEL.value not in models.MODEL_NAMES:
        raise ValueError(
            f"--model: unknown {_MODEL.value!r}; allowed: {', '.join(models.MODEL_NAMES)}"
        )
    shapes = [v.shape for v in masks.values()]
    c_in = int(shapes[0][2]) if len(shapes[0]) == 4 else int(shapes[0][0])
    try:
        model = models.get_model(_MODEL.value, num_classes=int(shapes[-1][-1]), timesteps=1)
        layers = models.describe_layers(model, (_INPUT_SIZE.value, _INPUT_SIZE.value, c_in))
    except ValueError as e:
        raise ValueError(
            f"--model: {_MODEL.value} cannot take these masks/input size ({e})"
        ) from None
    got = {x.path: tuple(x.kernel_shape) for x in layers}
    want = {k: tuple(v.shape) for k, v in masks.items()}
    if got != want:
        diff = [k for k in want if got.get(k) != want[k]] or list(got)
        other = LAYOUTS[1 - LAYOUTS.index(_LAYOUT.value)]
        reread = {k: checks.other_reading(v.shape, _LAYOUT.value) for k, v in masks.items()}
        hint = f"; they fit it read with --layout {other}" if reread == got else ""
        raise ValueError(
            f"--model: {_MODEL.value} at input {_INPUT_SIZE.value} does not have "
            f"the masks' layers (first mismatch: {diff[0]!r}){hint}"
        )
    return hardware.specs_from_layers(
        layers, conv_only=_CONV_ONLY.value, skip_first=_SKIP_FIRST.value
    )


def _nir_ticket(path: str):
    """The NIR graph's masks and layer specs (`interop.import_nir`), or None for a mask .npz."""
    if not files.is_nir_file(path):
        return None
    from uticket_jax import interop  # NIR files only: the mask-file path never imports nir

    for fl in (_MODEL, _OUT_SIZES, _INPUT_SIZE, _ARCH):
        if fl.present:
            raise ValueError(
                f"--{fl.name}: a NIR --masks file gives its layer sizes itself; leave it out"
            )
    return interop.import_nir(path, conv_only=_CONV_ONLY.value, skip_first=_SKIP_FIRST.value)


def _inputs() -> tuple:
    """The sweep's configs, networks, layer specs and spike rates, every input checked."""
    if not _MASKS.value:
        raise ValueError("--masks: required (a mask .npz file)")
    if not _OUT.value:
        raise ValueError("--out: required (an output directory)")
    checks.check_int("--input_size", _INPUT_SIZE.value, minimum=1)
    checks.check_int("--print_rows", _MAX_PRINT.value, minimum=0)
    if _ARCH.value not in hardware.layers.ARCHS:
        raise ValueError(
            f"--arch: unknown {_ARCH.value!r}; allowed: {', '.join(hardware.layers.ARCHS)}"
        )
    if _LAYOUT.value not in LAYOUTS:
        raise ValueError(f"--layout: unknown {_LAYOUT.value!r}; allowed: {', '.join(LAYOUTS)}")
    ticket = _nir_ticket(_MASKS.value)
    masks = ticket.masks if ticket else load_mask_file(_MASKS.value, _LAYOUT.value)
    networks = {_MASKS.value: masks}
    if _COMPARE.value == "dense":
        networks["dense"] = {k: np.ones_like(v) for k, v in masks.items()}
    elif _COMPARE.value:
        if files.is_nir_file(_COMPARE.value):
            other = _nir_ticket(_COMPARE.value).masks
        else:
            other = load_mask_file(_COMPARE.value, _LAYOUT.value)
        hardware.check_same_layers(masks, other, "--compare")
        networks[_COMPARE.value] = other
    if ticket:
        specs = ticket.specs
    elif _MODEL.value:
        specs = _model_specs(masks)
    else:
        with cli.flag_errors("input_size", "out_sizes", "arch"):
            specs = _specs(masks)
    checks.check_specs(specs, "--input_size/--out_sizes")
    trace = _spike_trace(masks, specs)
    configs, model, consts = _configs(next(iter(trace.values())).shape[0] if trace else None)
    rates = hardware.load_spike_rates(_RATES.value) if _RATES.value else None
    hardware.spike_rate_vector(rates, specs)  # validates before anything is written
    if distributed.is_writer():  # checked now, created after the sweep (it may still refuse)
        workdirs.prepare(
            _OUT.value, workdirs.SWEEP, flag="--out", overwrite=_OVERWRITE.value, create=False
        )
    return configs, model, consts, networks, specs, (rates, trace)


def _specs(masks: dict) -> list[hardware.LayerSpec]:
    """Layer descriptions from the masks' shapes and --input_size / --out_sizes / --arch."""
    return hardware.specs_from_shapes(
        {k: v.shape for k, v in masks.items()},
        input_size=_INPUT_SIZE.value,
        out_sizes=cli.int_list(_OUT_SIZES) if _OUT_SIZES.value else None,
        arch=_ARCH.value,
        conv_only=_CONV_ONLY.value,
        skip_first=_SKIP_FIRST.value,
    )


def _on_stop(stop: signals.Stopped) -> str:
    written = _HELD and os.path.exists(os.path.join(_OUT.value, "sweep.json"))
    rerun = signals.resume_command(drop=(), add=("--overwrite",) if written else ())
    return f"{'' if written else ' before writing'}; rerun with: {rerun}"


def run() -> list[dict]:
    backend = _backend()  # before connecting: a bad value fails at once, on every process
    distributed.initialize()
    # Every process checks the inputs; a failure on one is a one-line failure on all.
    configs, model, consts, networks, specs, (rates, trace) = distributed.together(_inputs)
    # With several processes (jax backend) the configs are sharded over all of their devices;
    # every process gets every row back, and process 0 writes them.
    with cli.flag_errors("n_pe"):  # e.g. too many PEs for the exact int32 load counts
        if trace is None:
            rows = _sweep(networks, specs, configs, rates, model, consts, backend)
        else:
            rows = _spike_sweep(networks, specs, configs, trace, model, consts)
    if distributed.is_writer():
        try:
            _write(rows, len(networks), configs, model.name, backend)
        finally:
            for held in _HELD:
                held.release()
    return rows


def _sweep(networks, specs, configs, rates, model, consts, backend) -> list[dict]:
    baseline = _COMPARE.value if _COMPARE.value else None
    return hardware.sweep_networks(
        networks,
        specs,
        configs,
        spike_rates=rates,
        baseline=baseline,
        layers=_LAYER_ROWS.value,
        energy_model=model,
        energy_constants=consts,
        backend=backend,
    )


def _spike_sweep(networks, specs, configs, trace, model, consts) -> list[dict]:
    """Spike-driven rows (`workload: spikes`) of every network on the recorded trace."""
    kw = {"energy_model": model, "energy_constants": consts}
    results = {
        k: hardware.simulate_spikes(m, trace, specs, configs, **kw) for k, m in networks.items()
    }
    rows = []
    for label, res in results.items():
        base = results[_COMPARE.value] if _COMPARE.value and label != _COMPARE.value else None
        rows += hardware.sweep_rows(
            res, configs, specs, label, base, _COMPARE.value, _LAYER_ROWS.value, consts
        )
    return [{"workload": "spikes", **r} for r in rows]


def _write(rows: list[dict], n_networks: int, configs, model_name: str, backend: str) -> None:
    """sweep.json, sweep.csv, the plots and the printed table (in --out, prepared here)."""
    _prepare_out(_OUT.value)
    _write_atomic(os.path.join(_OUT.value, "sweep.json"), json.dumps(rows))
    flat = [
        {**({"workload": r["workload"]} if "workload" in r else {}), **hardware.flat_row(r)}
        for r in rows
    ]
    fields = list(dict.fromkeys(k for r in flat for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(flat)
    _write_atomic(os.path.join(_OUT.value, "sweep.csv"), buf.getvalue())
    plots.sweep_plots(rows, _OUT.value)
    if _MAX_PRINT.value > 0:
        print(_table(rows, _MAX_PRINT.value))
    print(
        f"{len(rows)} rows ({n_networks} masks x {hardware.num_configs(configs)} configs, "
        f"energy model {model_name}, "
        + ("spike-driven" if rows and "workload" in rows[0] else f"backend {backend}")
        + f") -> {_OUT.value}"
    )


if __name__ == "__main__":
    cli.run(run, name="sweep", on_stop=_on_stop)
