"""Fuzzing a launcher's flags in one process: every case succeeds, or exits 2 with one line.

  python -m tests.fuzz_launchers LAUNCHER CASES [--seed N]   # lth, train, rebalance or sweep

loads `experiments/LAUNCHER.py` once, then runs CASES hypothesis-generated command lines through
the same code `cli.run` runs (`cli.parse_flags`, then `cli.guarded(main)`), each in a fresh
scratch folder, and prints one JSON line: cases, outcomes by exit status, seconds, failures.
A case fails when it raises anything but `SystemExit` (a traceback), exits with a status other
than 0 and 2, exits 2 with other than exactly one stderr line starting with the launcher's name
and naming a flag or a file, or leaves anything behind in the scratch folder on failure (or
changes an input file in any case). `tests/test_fuzz_launchers.py` runs a fast slice of each
launcher; the longer campaign's figures are in BUILD_NOTES.md ("Fuzzing the launchers").

What each case covers: every flag of the launcher but the multi-process ones (`--distributed`,
`--coordinator_address`, `--num_processes`, `--process_id`, `--distributed_timeout`: they start
JAX's distributed runtime; `tests/test_multihost.py` covers them) and orbax's own; values drawn
per flag type (integers from 0 to beyond 64 bits and negative, floats with NaN, infinities and
1e400, comma lists, choices from the allowed names and garbage text, paths to good and hostile
files, folders that hold a run or the user's files), plus unknown flags and stray arguments.
The heavy work of lth.py and train.py (training) is replaced by a stub that records the checked
configuration: the cases test the boundary, where every check runs before anything is written.
`--backend jax` is not drawn (its kernels compile for seconds per shape; both backends share the
checks at `rebalance_network` / `simulate`).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import importlib.util
import io
import json
import os
import pickle
import re
import shutil
import sys
import tempfile
import time
import traceback

import numpy as np
from absl import flags
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = {"distributed", "coordinator_address", "num_processes", "process_id", "distributed_timeout"}
NAMES = {"lth": "lth.py", "train": "train.py", "rebalance": "rebalance.py", "sweep": "sweep"}
SHAPES = {
    "features/conv0/kernel": (3, 3, 1, 4),
    "features/conv1/kernel": (3, 3, 4, 4),
    "features/conv2/kernel": (3, 3, 4, 8),
    "classifier/kernel": (32, 3),
}


# ---- inputs: good and hostile files, made once ---------------------------------------------------


def make_inputs(root: str) -> dict[str, str]:
    """Files the cases name: `{label: path}`."""
    rng = np.random.default_rng(0)
    m = {k: rng.random(s) < 0.4 for k, s in SHAPES.items()}
    w = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    p = {k: os.path.join(root, k) for k in ("masks.npz", "masks_b.npz", "weights.npz")}
    np.savez(p["masks.npz"], **m)
    np.savez(p["masks_b.npz"], **{k: rng.random(s) < 0.4 for k, s in SHAPES.items()})
    np.savez(p["weights.npz"], **w)
    oihw = {k: (v.transpose(3, 2, 0, 1) if v.ndim == 4 else v.T) for k, v in m.items()}
    hostile = {
        "oihw.npz": lambda f: np.savez(f, **oihw),
        "half.npz": lambda f: np.savez(f, **{k: v * 0.5 for k, v in w.items()}),
        "nan_weights.npz": lambda f: np.savez(f, **{k: v * np.nan for k, v in w.items()}),
        "empty.npz": lambda f: np.savez(f),
        "objects.npz": lambda f: np.savez(f, k=np.array([[None]], dtype=object)),
        "raw.npz": lambda f: np.save(f, np.ones((2, 2))),
        "pickle.npz": lambda f: pickle.dump({"k": 1}, f),
        "text.npz": lambda f: f.write(b"layer,mask\n"),
        "one_layer.npz": lambda f: np.savez(f, k=np.ones((3, 3, 2, 2), bool)),
        # spike traces (sweep.py --spike_trace): values other than 0/1, a wrong rank
        "trace_twos.npz": lambda f: np.savez(f, **{k: np.full((2, 1, 4), 2.0) for k in SHAPES}),
        "trace_rank.npz": lambda f: np.savez(f, **{k: np.ones((2,), bool) for k in SHAPES}),
    }
    for name, write in hostile.items():
        p[name] = os.path.join(root, name)
        with open(p[name], "wb") as f:
            write(f)
    raw = open(p["masks.npz"], "rb").read()
    p["truncated.npz"] = os.path.join(root, "truncated.npz")
    open(p["truncated.npz"], "wb").write(raw[: len(raw) // 2])
    rates = {
        "rates.json": json.dumps({"features/conv1/kernel": 0.3}),
        "rates_nan.json": '{"features/conv1/kernel": NaN}',
        "rates_list.json": "[0.1]",
        "rates_deep.json": "[" * 5000,
        "rates_binary.json": "\udcff",
    }
    for name, text in rates.items():
        p[name] = os.path.join(root, name)
        open(p[name], "wb").write(text.encode("utf-8", "surrogateescape"))
    p["folder"] = root
    p["missing"] = os.path.join(root, "missing", "x.npz")
    return p


INPUT_FLAGS = ("masks", "weights", "compare", "spike_rates", "spike_trace", "data_dir")


def _digest(paths: dict[str, str]) -> str:
    h = hashlib.sha256()
    for k in sorted(paths):
        if os.path.isfile(paths[k]):
            h.update(open(paths[k], "rb").read())
    return h.hexdigest()


# ---- value strategies per flag ------------------------------------------------------------------

GARBAGE = st.one_of(
    st.sampled_from(["", " ", "x", "1,x", ",", "--", "None", "1e3", "0x10", "½", "-"]),
    st.text(max_size=8),
)
BIG = [0, 1, 2**31 - 1, 2**31, 2**32, 2**32 + 16, 2**63, -(2**63), 10**30, -1, -(2**31)]
INTS = st.one_of(st.integers(-3, 40), st.sampled_from(BIG))
INT_TEXT = st.one_of(INTS.map(str), GARBAGE)
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "-0", "0", "1", "0.5", "99.9", "100"]),
    GARBAGE,
)
INT_LIST = st.lists(INT_TEXT, min_size=1, max_size=3).map(",".join)
FLOAT_LIST = st.lists(FLOATS, min_size=1, max_size=3).map(",".join)


def _choices(*names: str):
    return st.one_of(st.sampled_from(list(names)), GARBAGE)


def vocabulary() -> dict[str, st.SearchStrategy]:
    """Name-specific values (choices, numeric strings) for the flags of every launcher."""
    from uticket_jax import configs, data, models, workload
    from uticket_jax.hardware import energy

    lists = ("n_pe", "timesteps", "clock_mhz", "out_sizes")
    vocab = {n: INT_LIST for n in lists}
    vocab.update({n: FLOAT_LIST for n in ("clock_mhz", "e_acc_pj", "e_fetch_pj", "e_idle_pj")})
    vocab.update(
        preset=_choices(*configs.NAMES),
        dataset=_choices("digits", "digits", "digits", *data.DATASET_NAMES),
        arch=_choices(*models.MODEL_NAMES, "auto", "vgg", "resnet"),
        model=_choices(*models.MODEL_NAMES),
        mapping=_choices(*workload.MAPPINGS, "output_channel,input_split"),
        policy=_choices(*workload.POLICIES),
        target=_choices(*workload.TARGETS),
        optimizer=_choices("sgd", "adam"),
        schedule=_choices("cosine", "step", "constant"),
        scope=_choices("global", "layer"),
        prunable=_choices("conv_dense", "conv"),
        retrain=_choices("full", "rest"),
        energy_model=_choices(*energy.ENERGY_MODELS),
        layout=_choices("hwio", "oihw"),
        backend=_choices("numpy"),
        arms=_choices("lth", "uticket", "lth,uticket", "lth,lth", "lth,x"),
        et_candidates=INT_LIST,
        leak_uw=FLOAT_LIST,
        seed=INT_TEXT,
    )
    return vocab


def flag_values(flag, vocab, inputs):
    """A strategy of command-line spellings of one flag (`["--name=value"]` or `[]`)."""
    name, kind = flag.name, flag.flag_type()
    if kind == "bool":
        return st.sampled_from([[f"--{name}"], [f"--no{name}"], [f"--{name}=maybe"]])
    if name in INPUT_FLAGS:
        labels = ["masks.npz", "masks_b.npz", "weights.npz", "missing", "folder", "rates.json"]
        labels += [k for k in inputs if k not in labels]
        values = st.one_of(st.sampled_from(labels).map(inputs.get), st.just("dense"), GARBAGE)
    elif name in vocab:
        values = vocab[name]
    elif kind == "int":
        values = INT_TEXT
    elif kind == "float":
        values = FLOATS
    elif name.endswith(("_mw", "_pj", "_nj", "_uw", "_w")):
        values = FLOAT_LIST
    else:
        values = GARBAGE
    return values.map(lambda v: [f"--{name}={v}"])


# ---- where a case writes ------------------------------------------------------------------------


def _run_folder(kind: str, path: str) -> None:
    """A folder holding an earlier run of launcher `kind` (its marker file)."""
    os.makedirs(path)
    marker = {
        "lth": ("config.json", {"preset": "digits", "rounds": 11, "arms": ["lth"], "seed": 0}),
        "train": ("results.json", {"test_accuracy": 0.9, "history": [], "arch": "digits_snn"}),
        "sweep": ("sweep.json", [{"config": {}, "network": {}}]),
    }.get(kind)
    if marker:
        with open(os.path.join(path, marker[0]), "w") as f:
            json.dump(marker[1], f)
    with open(os.path.join(path, "notes.txt"), "w") as f:
        f.write("earlier\n")


def output_targets(kind: str, scratch: str, inputs: dict[str, str]) -> dict[str, str]:
    """Places a case may write to (a new path, an empty folder, a run, the user's files, ...)."""
    os.makedirs(os.path.join(scratch, "empty"))
    _run_folder(kind, os.path.join(scratch, "run"))
    _run_folder("none", os.path.join(scratch, "user"))
    with open(os.path.join(scratch, "file.txt"), "w") as f:
        f.write("a file\n")
    shutil.copy(inputs["masks_b.npz"], os.path.join(scratch, "old.npz"))
    names = ("out", "out.npz", "empty", "run", "user", "file.txt", "old.npz", ".", "")
    return {n: os.path.join(scratch, n) if n else "" for n in names}


def _snapshot(root: str) -> dict[str, tuple[int, int]]:
    out = {}
    for base, dirs, names in os.walk(root):
        for n in dirs + names:
            p = os.path.join(base, n)
            st_ = os.lstat(p)
            out[os.path.relpath(p, root)] = (st_.st_size, st_.st_mtime_ns if n in names else 0)
    return out


# ---- one case -----------------------------------------------------------------------------------


def load(kind: str):
    """The launcher module, its heavy work stubbed out (see the module docstring)."""
    spec = importlib.util.spec_from_file_location(f"fuzz_{kind}", f"{ROOT}/experiments/{kind}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if kind == "lth":
        mod._run = lambda cfg, dataset, path: []
        mod._finish = lambda records, path: None
    if kind == "train":
        mod._train = lambda arch, dataset, dp, workdir: {
            "arch": arch,
            "dataset": dataset.name,
            "test_accuracy": 0.5,
            "best_test_accuracy": 0.5,
            "seconds": 0.0,
        }
    return mod


def run_case(mod, kind: str, argv: list[str], cwd: str) -> tuple[int, str, str]:
    """`(exit status, stdout, stderr)` of one command line, in-process, as `cli.run` runs it."""
    from uticket_jax.launch import cli

    flags.FLAGS.unparse_flags()
    out, err, code = io.StringIO(), io.StringIO(), 0
    main = mod.main if hasattr(mod, "main") else mod.run
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.parse_flags(NAMES[kind], [kind, *argv])
                cli.guarded(main, NAMES[kind])()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(old)
        if hasattr(mod, "_HELD"):  # a sweep that failed while writing still holds its lock
            for held in mod._HELD:
                held.release()
            mod._HELD.clear()
    return code, out.getvalue(), err.getvalue()


def judge(
    kind: str, code: int, stderr: str, named: list[str], before, after, values: tuple = ()
) -> str | None:
    """What is wrong with a case's outcome, or None.

    `named`: the paths a line may name; `values`: the path flags' values, which it may name
    quoted (`--data_dir=dense` as `'dense'`).
    """
    lines = stderr.strip().splitlines()
    if code == 0:
        return None
    if code != 2:
        return f"exit status {code}"
    if len(lines) != 1:
        return f"{len(lines)} stderr lines"
    line = lines[0]
    if not line.startswith(f"{NAMES[kind]}: "):
        return "the line does not start with the launcher's name"
    body = line[len(NAMES[kind]) + 2 :]
    names_flag = re.search(r"--[a-z][a-z_0-9]*", body) is not None
    names_file = (
        any(p and p in body for p in named)
        or any(repr(v) in body for v in values)
        or re.match(r"^(masks|weights|spike_rates)\b", body)
    )
    if not (names_flag or names_file):
        return "the line names no flag and no file"
    if before != after:
        changed = sorted(set(before) ^ set(after)) or [k for k in after if before[k] != after[k]]
        return f"files changed on failure: {changed[:3]}"
    return None


# ---- the campaign -----------------------------------------------------------------------------

OUTPUT_FLAG = {"lth": "workdir", "train": "workdir", "rebalance": "out", "sweep": "out"}
BASE = {
    "lth": ["--progress=false"],
    "train": ["--progress=false"],
    "rebalance": ["--masks={masks.npz}", "--weights={weights.npz}", "--n_pe=4"],
    "sweep": ["--masks={masks.npz}", "--input_size=8", "--n_pe=4", "--print_rows=0"],
}


def fuzzed_flags(kind: str) -> list:
    """The launcher's own flags (those its import registers), less the multi-process ones."""
    names = [n for n in flags.FLAGS if n not in SKIP and not n.startswith("experimental_")]
    return [flags.FLAGS[n] for n in sorted(set(names) - _BASELINE)]


def command_lines(kind: str, inputs: dict[str, str]) -> st.SearchStrategy:
    """Command lines: the base flags, an output place, a few fuzzed flags, maybe junk."""
    vocab = vocabulary()
    out = OUTPUT_FLAG[kind]
    pool = [f for f in fuzzed_flags(kind) if f.name != out]
    # Up to four flags per case, so that the checks behind the first ones are reached too.
    chosen = st.lists(st.sampled_from(pool), max_size=4, unique_by=lambda f: f.name)
    fuzz = chosen.flatmap(lambda fl: st.tuples(*[flag_values(f, vocab, inputs) for f in fl]))
    target = st.sampled_from(["out", "out", "out.npz", "empty", "run", "user", "file.txt"])
    target = st.one_of(target, st.sampled_from(["old.npz", ".", ""]))
    extra = st.sampled_from([[]] * 8 + [["--bogus=1"], ["stray"], ["--resume", "--overwrite"]])
    return st.tuples(target, fuzz, extra).map(
        lambda t: ([*BASE[kind], f"--{out}={{OUT:{t[0]}}}"], [a for f in t[1] for a in f], t[2])
    )


def _resolve(args: list[str], inputs: dict[str, str], targets: dict[str, str]) -> list[str]:
    def one(a: str) -> str:
        a = re.sub(r"\{OUT:([^}]*)\}", lambda m: targets[m.group(1)], a)
        return re.sub(r"\{([a-z_.]+)\}", lambda m: inputs.get(m.group(1), m.group(0)), a)

    return [one(a) for a in args]


def campaign(kind: str, cases: int, seed: int | None = None) -> dict:
    """Runs `cases` generated command lines of launcher `kind`; returns the summary."""
    work = tempfile.mkdtemp(prefix=f"fuzz_{kind}_")
    os.makedirs(os.path.join(work, "inputs"))
    inputs = make_inputs(os.path.join(work, "inputs"))
    mod = load(kind)
    digest = _digest(inputs)
    stats = {"cases": 0, "exit": collections.Counter(), "flags": collections.Counter()}
    failures: list[dict] = []

    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        derandomize=seed is None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def one(data):
        base, fuzz, extra = data.draw(command_lines(kind, inputs))
        scratch = os.path.join(work, f"case{stats['cases']}")
        os.makedirs(scratch)
        targets = output_targets(kind, scratch, inputs)
        argv = _resolve(base + fuzz + extra, inputs, targets)
        before = _snapshot(scratch)
        try:
            code, _, err = run_case(mod, kind, argv, scratch)
            given = tuple(  # the files and folders the case names (quoted in a message)
                a.split("=", 1)[1]
                for a in argv
                if a.startswith("--") and a[2:].split("=")[0] in (*INPUT_FLAGS, "workdir", "out")
            )
            named = [*inputs.values(), *targets.values()]
            problem = judge(kind, code, err, named, before, _snapshot(scratch), given)
        except Exception as e:  # a traceback: the one thing a case must never give
            code, err = "traceback", "".join(traceback.format_exception(e))[-1500:]
            problem = f"traceback: {type(e).__name__}: {e}"
        if _digest(inputs) != digest:
            problem = "an input file changed"
        stats["cases"] += 1
        stats["exit"][str(code)] += 1
        named = re.search(r"--[a-z][a-z_0-9]*", err)
        if code == 2:
            stats["flags"][named.group(0) if named else err.split(":")[1].strip()[:20]] += 1
        if problem:
            failures.append({"problem": problem, "argv": argv, "exit": code, "stderr": err[-600:]})
        shutil.rmtree(scratch, ignore_errors=True)

    if seed is not None:
        one = __import__("hypothesis").seed(seed)(one)
    start = time.perf_counter()
    one()
    shutil.rmtree(work, ignore_errors=True)
    return {
        "launcher": kind,
        "cases": stats["cases"],
        "exit": dict(stats["exit"]),
        "refused_by": dict(stats["flags"].most_common(12)),
        "seconds": round(time.perf_counter() - start, 1),
        "failures": len(failures),
        "first_failures": failures[:5],
    }


_BASELINE: set[str] = set()


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("launcher", choices=sorted(NAMES))
    parser.add_argument("cases", type=int)
    parser.add_argument("--seed", type=int, default=None, help="random (else derandomized)")
    args = parser.parse_args(argv)
    os.environ.setdefault("UTICKET_HUGEPAGES", "0")
    import jax  # noqa: F401  (its flags, and the modules every launcher imports, first)

    import uticket_jax.launch.cli  # noqa: F401
    import uticket_jax.launch.distributed  # noqa: F401

    _BASELINE.update(flags.FLAGS)
    summary = campaign(args.launcher, args.cases, args.seed)
    print(json.dumps(summary))
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
