"""The benchmark scripts run and print their one JSON line (subprocess; reduced settings).

These check the scripts, not the speed: speed figures come from full runs (BUILD_NOTES.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"benchmarks.{script.removesuffix('.py')}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        timeout=300,
    )


def _json_line(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stdout  # exactly one JSON line on stdout
    return json.loads(lines[0])


@pytest.mark.slow
def test_bench_rebalance_reduced():
    out = _json_line(
        _run(
            "bench_rebalance.py",
            "--n_pe=8",
            "--repeats=1",
            "--oracle_n_pe=8",
            "--mappings=input_split",
            "--policies=random",
        )
    )
    assert out["bench"] == "rebalance" and out["pass_ms"] > 0
    assert list(out["results"]) == ["input_split/n8"]
    row = out["results"]["input_split/n8"]
    assert row["count_ms"] > 0 and row["metrics_ms"] > 0 and row["oracle_ms"] > 0
    ratio = row["rebalance_random_ms"] / row["count_ms"]
    assert row["rebalance_random_over_count"] == pytest.approx(ratio, rel=1e-2)
    assert "rebalance_magnitude_ms" not in row  # only the policies asked for
    assert "oracle_over_rebalance" not in row  # the oracle runs the magnitude policy
    # The fresh-process first call (compilation included) and the whole CLI process.
    assert row["first_random_s"] > row["compile_random_s"] > 0
    assert row["programs_random"] >= 3 and row["cli_random_s"] > 0
    assert "first_magnitude_s" not in row


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--n_pe=4,x", "--n_pe: expected a comma list of integers, got '4,x'"),
        ("--n_pe=0,8", "--n_pe: must be integers >= 1, got '0,8'"),
        ("--mappings=tiles", "--mappings: got ['tiles']; allowed: output_channel, input_split"),
        ("--policies=greedy", "--policies: got ['greedy']; allowed: magnitude, random"),
        ("--repeats=0", "--repeats: must be a positive integer"),
    ],
)
def test_bench_rebalance_bad_flags(flag, message):
    r = _run("bench_rebalance.py", flag)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bench_rebalance: {message}"), r.stderr


@pytest.mark.slow
def test_bench_train_digits_in_process():
    out = _json_line(
        _run(
            "bench_train.py",
            "--models=digits_snn",
            "--noplain",
            "--nopeer",
            "--repeats=1",
            "--steps=1",
            "--batch_size=16",
        )
    )
    assert out["backend"] == "cpu" and out["batch_size"] == 16
    assert isinstance(out["glibc_hugepages"], bool)
    assert set(out["digits_snn"]) == {"ours_images_per_s"}
    assert out["digits_snn"]["ours_images_per_s"] > 0
    assert "vgg16" not in out


@pytest.mark.slow
def test_bench_train_trials_in_child_processes():
    # Every variant in a child process per trial; the figures are the trials' medians.
    out = _json_line(
        _run(
            "bench_train.py",
            "--models=digits_snn",
            "--nopeer",
            "--repeats=1",
            "--steps=1",
            "--batch_size=16",
            "--trials=2",
        )
    )
    res = out["digits_snn"]
    assert [set(tr) for tr in res["trials"]] == [{"ours", "plain"}] * 2
    ours = sorted(tr["ours"] for tr in res["trials"])
    assert res["ours_images_per_s"] == pytest.approx((ours[0] + ours[1]) / 2, abs=0.01)
    plain = sorted(tr["plain"] for tr in res["trials"])
    speedup = res["ours_images_per_s"] / ((plain[0] + plain[1]) / 2)
    assert res["custom_conv_speedup"] == pytest.approx(speedup, rel=1e-2)


def test_bench_train_bad_trials():
    r = _run("bench_train.py", "--trials=0")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == "--trials: must be a positive integer, got 0"


@pytest.mark.slow
def test_bench_sweep():
    out = _json_line(_run("bench_sweep.py", "--repeats=1", "--cold_runs=1", "--max_n_pe=16"))
    for mapping in ("output_channel", "input_split"):
        row = out[mapping]
        assert row["configs"] == 16 * 64
        assert row["configs_per_s"] > 0 and row["speedup_vs_oracle"] > 0
        assert row["sweep_ms_first_call"] >= row["sweep_ms"] and row["numpy_configs_per_s"] > 0
    cold = out["cold_sweep_cli"]
    assert cold["configs"] == 100 and cold["runs"] == 1
    assert 0 < cold["numpy_wall_s"] and 0 < cold["jax_wall_s"]


@pytest.mark.slow
def test_bench_spikes_reduced():
    out = _json_line(
        _run(
            "bench_spikes.py",
            "--model=digits_snn",
            "--input_size=8",
            "--batch=2",
            "--timesteps=2",
            "--n_pe=2,4",
            "--repeats=1",
        )
    )
    assert out["configs"] == 4 and out["forward_ms"] > 0 and out["spikes_ms"] > 0
    assert out["warm_ratio"] > 0 and len(out["network_utilization"]) == 4
