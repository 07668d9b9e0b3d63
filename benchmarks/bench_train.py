r"""Training-step throughput (images/s) of the spiking models, against SpikingJelly when installed.

Times one jitted masked train step (forward + backward + SGD momentum 0.9 / weight decay 5e-4),
compiled and warmed up, best of `--repeats`, for the digits SNN (8x8x1, 10 classes), the `fmnist`
preset's net (`fmnist_snn`, 28x28x1; not in the default list) and VGG16-BN at CIFAR shape
(32x32x3, 10 classes), all with batch `--batch_size` and `--timesteps` steps:

* `ours_images_per_s`: `uticket_jax.training.step.train_step` with the default `Conv` (impl
  "auto": the CPU-tuned custom backward of `uticket_jax.ops.conv`);
* `ours_plain_conv_images_per_s`: the same model with `conv_impl="lax"` (plain
  `lax.conv_general_dilated` + autodiff), so the effect of the custom convolution shows;
* `spikingjelly_images_per_s` and `ratio` (ours / theirs), VGG16-BN only, when `torch` and
  `spikingjelly` import: the same network built from SpikingJelly's multi-step layers (LIF tau 4/3,
  v_th 1, hard reset to 0, detach_reset, ATan(2); direct encoding: conv0 + bn0 once on the image,
  repeated over T), trained with `torch.optim.SGD` (in a child process, see below).

`--layers` adds per-layer timings of VGG16's convolutions (forward, input gradient, weight gradient;
plain lax vs ours, and PyTorch's own kernels when torch imports) at the folded batch T*B, and
their sums per implementation (`vgg16_layers_total_ms`).

On Linux with glibc >= 2.35 and the kernel's THP mode `madvise`, the script restarts itself once
with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (`uticket_jax.launch.hostmem`), so both frameworks'
large per-step buffers fault in as huge pages; `glibc_hugepages` in the output says whether that
was in effect, and `UTICKET_HUGEPAGES=0` runs without it.

SpikingJelly runs in a child process of its own with the same environment (`--peer_process`),
and each variant's repeats run on their own, one variant after the other (`--interleave` times
them round-robin instead). With `--trials N` (N > 1) every variant, ours included, runs in a fresh
child process in each of N trials (the order of the variants reversed every other trial); the
reported images/s and `ratio` are then medians over the trials (the ratio: the median of the
trials' ratios), and `trials` lists each trial's figures. On the development VM a process
sometimes runs ~30 % slower than another one running the same code, so one process pair can
land on either side of parity; the median of several trials is the steadier figure.

Run it on a quiet machine: when other processes share the cores, SpikingJelly's OpenMP threads
slow down far more than XLA's (measured here: 3.6 to 37 images/s for the same step), and the
ratio then overstates ours.

Usage (about 3 minutes on 2 CPU cores):
  python -m benchmarks.bench_train
  python -m benchmarks.bench_train --models vgg16 --layers --repeats 5
  python -m benchmarks.bench_train --models fmnist_snn --batch_size 64   # the fmnist preset's step
  python -m benchmarks.bench_train --models vgg16 --noplain --trials 5   # ~4 minutes
Prints one JSON line (with `cpu`, the processor's facts: the figures hold for that CPU model).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from uticket_jax import models
from uticket_jax.launch import hostmem, machine
from uticket_jax.ops.conv import choose_impl, conv2d, explicit_padding
from uticket_jax.training import step as train

_MODELS = flags.DEFINE_list(
    "models", ["digits_snn", "vgg16"], "Models: digits_snn, fmnist_snn, vgg16."
)
_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per train step.")
_T = flags.DEFINE_integer("timesteps", 4, "Simulation steps T.")
_STEPS = flags.DEFINE_integer("steps", 3, "Train steps per timed repeat (vgg16; digits: x20).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats; the best is reported.")
_PEER = flags.DEFINE_bool("peer", True, "Time SpikingJelly's VGG16-BN when importable.")
_PEER_PROCESS = flags.DEFINE_bool(
    "peer_process",
    True,
    "Run SpikingJelly's steps in a child process of its own (same environment), so neither "
    "framework's memory traffic disturbs the other's; false: in this process.",
)
_INTERLEAVE = flags.DEFINE_bool(
    "interleave",
    False,
    "Time the variants round-robin, one repeat each in turn (fairer when other jobs load the "
    "machine, but every step then starts from the other framework's cache and memory state, "
    "which measured 5-20 percent slower for ours); false: all repeats of one variant, then "
    "the next.",
)
_TRIALS = flags.DEFINE_integer(
    "trials",
    1,
    "Process trials: above 1, every variant runs in a fresh child process per trial (ours, "
    "plain, SpikingJelly, in alternating order), and the reported figures are the medians over "
    "the trials, with each trial's figures under `trials`. On a VM whose processes land in "
    "faster or slower memory modes this gives a steadier ratio than one process.",
)
_SERVE = flags.DEFINE_enum(
    "serve",
    None,
    ["ours", "plain", "spikingjelly"],
    "Internal: serve this variant's train steps (first of --models) to a parent over stdin/stdout.",
)
_PLAIN = flags.DEFINE_bool("plain", True, "Also time our model with plain lax convolutions.")
_LAYERS = flags.DEFINE_bool("layers", False, "Add per-layer VGG16 conv timings.")

_SHAPES = {"digits_snn": (8, 8, 1), "fmnist_snn": (28, 28, 1), "vgg16": (32, 32, 3)}
_NUM_CLASSES = 10


def best_rates(steps: dict, n_images: int, n_steps: int, repeats: int) -> dict:
    """Images/s of each warmed-up `steps[name]()`, best of `repeats` runs of `n_steps` calls.

    The variants are timed round-robin (one run of each per repeat) so that a change in the load
    of a shared machine hits them alike.
    """
    for step in steps.values():  # compile and warm up
        step()
        step()
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(n_steps):
                step()
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: n_images * n_steps / t for name, t in best.items()}


def ours_step(name: str, conv_impl: str, batch: int, timesteps: int):
    """One-call closure running `train.train_step` for model `name` with `conv_impl` convs."""
    model = models.get_model(
        name, num_classes=_NUM_CLASSES, timesteps=timesteps, conv_impl=conv_impl
    )
    key_init, key_x = jax.random.split(jax.random.key(0))
    images = jax.random.normal(key_x, (batch, *_SHAPES[name]), jnp.float32)  # [B, H, W, C]
    labels = jnp.arange(batch, dtype=jnp.int32) % _NUM_CLASSES
    variables = model.init(key_init, images, train=False)
    tx = train.make_optimizer("sgd", lr=0.05, total_steps=10_000, momentum=0.9, weight_decay=5e-4)
    holder = [train.create_train_state(model.apply, variables, tx)]

    def step():
        holder[0], metrics = train.train_step(holder[0], images, labels)
        jax.block_until_ready(metrics["loss"])

    return step


def spikingjelly_step(batch: int, timesteps: int):
    """One-call closure training the same VGG16-BN SNN in SpikingJelly, None if not installed."""
    try:
        import torch
        from spikingjelly.activation_based import functional, layer, neuron, surrogate
    except ImportError:
        return None
    torch.manual_seed(0)

    def lif():
        return neuron.LIFNode(
            tau=4.0 / 3.0,
            v_threshold=1.0,
            v_reset=0.0,
            detach_reset=True,
            surrogate_function=surrogate.ATan(alpha=2.0),
            step_mode="m",
        )

    cfg = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
    # Encoder: conv0 + bn0 on the images [B, 3, 32, 32] once (single-step layers).
    encoder = torch.nn.Sequential(
        torch.nn.Conv2d(3, cfg[0], 3, padding=1, bias=False), torch.nn.BatchNorm2d(cfg[0])
    )
    body, c_in = [lif()], cfg[0]
    for v in cfg[1:]:
        if v == "M":
            body.append(layer.MaxPool2d(2, 2, step_mode="m"))
        else:
            body += [
                layer.Conv2d(c_in, v, 3, padding=1, bias=False, step_mode="m"),
                layer.BatchNorm2d(v, step_mode="m"),
                lif(),
            ]
            c_in = v
    body += [layer.Flatten(step_mode="m"), layer.Linear(512, _NUM_CLASSES, step_mode="m")]
    body = torch.nn.Sequential(*body)
    functional.set_step_mode(body, "m")
    params = list(encoder.parameters()) + list(body.parameters())
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    images = torch.randn(batch, 3, 32, 32)
    labels = torch.arange(batch) % _NUM_CLASSES
    encoder.train()
    body.train()

    def step():
        current = encoder(images)  # [B, 64, 32, 32]
        seq = current.unsqueeze(0).repeat(timesteps, 1, 1, 1, 1)  # [T, B, 64, 32, 32]
        logits = body(seq)  # [T, B, classes]
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), labels.repeat(timesteps)
        )  # mean over T and B
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        functional.reset_net(body)

    return step


_PEER_TAG = "PEER "  # prefix of the child's protocol lines (torch may print to stdout too)


def _variant_step(variant: str, name: str, batch: int, timesteps: int):
    """`(step, header)` of one variant: ours ("auto" convs), plain ("lax" convs) or SpikingJelly
    (VGG16 only; `(None, None)` when it does not import)."""
    if variant != "spikingjelly":
        impl = "auto" if variant == "ours" else "lax"
        return ours_step(name, impl, batch, timesteps), {}
    step = spikingjelly_step(batch, timesteps)
    if step is None:
        return None, None
    import torch

    return step, {"torch_threads": torch.get_num_threads()}


def serve_variant(variant: str, name: str, batch: int, timesteps: int) -> None:
    """Child side: one header line (JSON, null when the variant cannot run), then one train
    step per line read from stdin."""
    step, header = _variant_step(variant, name, batch, timesteps)
    print(_PEER_TAG + json.dumps(header), flush=True)
    if step is None:
        return
    for _ in sys.stdin:
        step()
        print(_PEER_TAG + "done", flush=True)


def _peer_line(proc, variant: str) -> str:
    for line in proc.stdout:
        if line.startswith(_PEER_TAG):
            return line[len(_PEER_TAG) :].strip()
    raise RuntimeError(f"the {variant} child process ended (status {proc.wait()})")


def child_step(
    variant: str, name: str, batch: int, timesteps: int, stack: contextlib.ExitStack
) -> tuple:
    """`(step, header)` with `variant`'s steps run by a child process of its own (same
    interpreter and environment), or `(None, None)` when the variant cannot run there
    (SpikingJelly not importable). The child ends when `stack` closes."""
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            f"--serve={variant}",
            f"--models={name}",
            f"--batch_size={batch}",
            f"--timesteps={timesteps}",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    stack.callback(proc.wait)
    stack.callback(proc.stdin.close)
    header = json.loads(_peer_line(proc, variant))
    if header is None:
        return None, None

    def step():
        proc.stdin.write("step\n")
        proc.stdin.flush()
        if _peer_line(proc, variant) != "done":
            raise RuntimeError(f"the {variant} child process answered out of turn")

    return step, header


def _vgg16_conv_shapes(batch: int, timesteps: int):
    """(x shape, w shape) of VGG16's 13 convs on 32x32 images; conv0 runs once (batch B)."""
    shapes, hw, c_in, first = [], 32, 3, True
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if v == "M":
            hw //= 2
            continue
        n = batch if first else batch * timesteps
        shapes.append(((n, hw, hw, c_in), (3, 3, c_in, v)))
        c_in, first = v, False
    return shapes


def _torch_conv_ms(x, w, dy, best_ms) -> dict | None:
    """PyTorch's (oneDNN on CPU) forward / input / weight gradient ms for the same conv, or None.

    The gradients come from `aten.convolution_backward`, the kernel autograd calls, one product
    at a time (`output_mask`).
    """
    try:
        import torch
    except ImportError:
        return None
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())  # NCHW
    wt = torch.from_numpy(np.asarray(w).transpose(3, 2, 0, 1).copy())  # OIHW
    dyt = torch.from_numpy(np.asarray(dy).transpose(0, 3, 1, 2).copy())

    def product(mask):
        def run():
            with torch.no_grad():
                if mask is None:
                    return torch.nn.functional.conv2d(xt, wt, padding=1)
                return torch.ops.aten.convolution_backward(
                    dyt, xt, wt, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask
                )

        return run

    return {
        "forward": best_ms(product(None)),
        "input_grad": best_ms(product([True, False, False])),
        "weight_grad": best_ms(product([False, True, False])),
    }


def bench_layers(batch: int, timesteps: int, repeats: int, peer: bool) -> list[dict]:
    """Per-conv milliseconds of forward, input and weight gradient: plain lax vs ours (auto), and
    PyTorch's kernels at the same shapes when `peer` and torch imports (`torch_ms`)."""

    def best_ms(fn, *args):
        jax.block_until_ready(fn(*args))
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            best = min(best, time.perf_counter() - t0)
        return round(best * 1e3, 2)

    rows = []
    for i, (xs, ws) in enumerate(_vgg16_conv_shapes(batch, timesteps)):
        key_x, key_w, key_d = jax.random.split(jax.random.key(i), 3)
        x = jax.random.normal(key_x, xs, jnp.float32)
        w = jax.random.normal(key_w, ws, jnp.float32)
        dy = jax.random.normal(key_d, (*xs[:3], ws[3]), jnp.float32)
        pads = explicit_padding(1, xs[1:3], ws[:2], (1, 1))
        row = {"layer": f"conv{i}", "x": list(xs), "w": list(ws)}
        row["gflop"] = round(2 * np.prod(xs[:3]) * np.prod(ws) / 1e9, 3)
        row["auto_impl"] = list(choose_impl(xs, ws, (1, 1), pads))
        for impl in ("lax", "auto"):
            f = lambda x, w, impl=impl: conv2d(x, w, 1, 1, impl)
            fwd = jax.jit(f)
            dx = jax.jit(lambda x, w, dy, f=f: jax.vjp(lambda x_: f(x_, w), x)[1](dy)[0])
            dw = jax.jit(lambda x, w, dy, f=f: jax.vjp(lambda w_: f(x, w_), w)[1](dy)[0])
            row[f"{impl}_ms"] = {
                "forward": best_ms(fwd, x, w),
                "input_grad": best_ms(dx, x, w, dy),
                "weight_grad": best_ms(dw, x, w, dy),
            }
        if peer and (torch_ms := _torch_conv_ms(x, w, dy, best_ms)) is not None:
            row["torch_ms"] = torch_ms
        rows.append(row)
    return rows


def layer_totals(rows: list[dict]) -> dict:
    """Sum over the convs of each implementation's forward + input + weight gradient ms (conv0's
    input gradient left out: a train step never needs it)."""
    totals = {}
    for key in ("lax_ms", "auto_ms", "torch_ms"):
        if all(key in r for r in rows):
            ms = [
                v
                for i, r in enumerate(rows)
                for product, v in r[key].items()
                if i > 0 or product != "input_grad"
            ]
            totals[key] = round(sum(ms), 1)
    return totals


def _usage(message: str) -> None:
    """Bad flag: one line on stderr, exit status 2."""
    print(message, file=sys.stderr)
    sys.exit(2)


def _variants(name: str) -> list[str]:
    out = ["ours"] + (["plain"] if _PLAIN.value else [])
    return out + (["spikingjelly"] if name == "vgg16" and _PEER.value else [])


def _n_steps(name: str) -> int:
    return _STEPS.value * (20 if name == "digits_snn" else 1)


def _one_process(name: str, b: int, t: int, reps: int, stack: contextlib.ExitStack):
    """`(rates, torch_threads)`: ours (and plain) timed in this process, SpikingJelly in a child
    (`--peer_process`) or here."""
    steps = {v: _variant_step(v, name, b, t)[0] for v in _variants(name) if v != "spikingjelly"}
    threads = None
    if "spikingjelly" in _variants(name):
        if _PEER_PROCESS.value:
            peer, header = child_step("spikingjelly", name, b, t, stack)
        else:
            peer, header = _variant_step("spikingjelly", name, b, t)
        if peer is not None:
            steps["spikingjelly"], threads = peer, header["torch_threads"]
    if _INTERLEAVE.value:
        rates = best_rates(steps, b, _n_steps(name), reps)
    else:  # each framework's repeats on their own: neither starts from the other's cache state
        rates = {}
        for key, step in steps.items():
            rates |= best_rates({key: step}, b, _n_steps(name), reps)
    return rates, threads


def _trials(name: str, b: int, t: int, reps: int) -> tuple[dict, int | None, list[dict]]:
    """`(median rates, torch_threads, per-trial rates)` over `--trials` trials, each variant in a
    fresh child process per trial, the variants' order reversed every other trial."""
    trials, threads = [], None
    for i in range(_TRIALS.value):
        order = _variants(name)[:: 1 if i % 2 == 0 else -1]
        rates = {}
        for variant in order:
            with contextlib.ExitStack() as stack:
                step, header = child_step(variant, name, b, t, stack)
                if step is None:
                    continue
                threads = header.get("torch_threads", threads)
                rates |= best_rates({variant: step}, b, _n_steps(name), reps)
        if "spikingjelly" in rates:
            rates["ratio"] = rates["ours"] / rates["spikingjelly"]
        trials.append({k: round(v, 3) for k, v in rates.items()})
    median = {k: float(np.median([tr[k] for tr in trials])) for k in trials[0]}
    return median, threads, trials


def _bench_model(name: str, b: int, t: int, reps: int, stack: contextlib.ExitStack) -> dict:
    if _TRIALS.value > 1:
        rates, threads, trials = _trials(name, b, t, reps)
    else:
        (rates, threads), trials = _one_process(name, b, t, reps, stack), None
    res = {"ours_images_per_s": round(rates["ours"], 2)}
    if "plain" in rates:
        res["ours_plain_conv_images_per_s"] = round(rates["plain"], 2)
        res["custom_conv_speedup"] = round(rates["ours"] / rates["plain"], 3)
    if "spikingjelly" in rates:
        res["spikingjelly_images_per_s"] = round(rates["spikingjelly"], 2)
        # One process: the ratio of the two rates. Trials: the median of the trials' ratios.
        res["ratio"] = round(rates.get("ratio", rates["ours"] / rates["spikingjelly"]), 3)
        res["torch_threads"] = threads
        res["peer_process"] = _PEER_PROCESS.value or trials is not None
        res["interleaved"] = _INTERLEAVE.value and trials is None
    if trials is not None:
        res["trials"] = trials
    return res


def run() -> dict:
    for flag in (_BATCH, _T, _STEPS, _REPEATS, _TRIALS):
        if flag.value <= 0:
            _usage(f"--{flag.name}: must be a positive integer, got {flag.value}")
    unknown = sorted(set(_MODELS.value) - set(_SHAPES))
    if unknown or not _MODELS.value:
        _usage(f"--models: got {_MODELS.value}; allowed: {', '.join(_SHAPES)}")
    out = {
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "cpu": machine.cpu_facts(),  # results and speed of XLA:CPU depend on the processor
        "batch_size": _BATCH.value,
        "timesteps": _T.value,
        "glibc_hugepages": hostmem.hugepages_active(),
    }
    b, t, reps = _BATCH.value, _T.value, _REPEATS.value
    for name in _MODELS.value:
        with contextlib.ExitStack() as stack:
            out[name] = _bench_model(name, b, t, reps, stack)
    if _LAYERS.value:
        out["vgg16_layers"] = bench_layers(b, t, reps, _PEER.value)
        out["vgg16_layers_total_ms"] = layer_totals(out["vgg16_layers"])
    return out


def main(argv):
    if len(argv) > 1:
        _usage(f"unexpected arguments: {argv[1:]}")
    if _SERVE.value:
        serve_variant(_SERVE.value, _MODELS.value[0], _BATCH.value, _T.value)
        return
    print(json.dumps(run()), flush=True)


if __name__ == "__main__":
    hostmem.reexec_with_hugepages()  # both frameworks' big buffers on huge pages
    sys.exit(app.run(main))
