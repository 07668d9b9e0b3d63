"""uticket_jax.launch.hostmem: when the glibc huge-page tunable applies; the one-time restart
only from a launcher's `__main__`, only on the CPU backend, never traced; children without it."""

import importlib
import os
import platform
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from uticket_jax.launch import hostmem

GLIBC = ("glibc", "2.36")


@pytest.mark.parametrize(
    "libc, thp",
    [
        (("glibc", "2.34"), "madvise"),  # before the tunable existed
        (("", ""), "madvise"),  # musl, macOS: no glibc
        (("glibc", "weird"), "madvise"),
        (GLIBC, "always"),  # already huge pages
        (GLIBC, "never"),  # the advice would be ignored
        (GLIBC, None),  # no THP in this kernel
    ],
)
def test_no_restart_where_the_tunable_cannot_help(libc, thp):
    assert hostmem.hugepage_env({"PATH": "/bin"}, libc=libc, thp=thp) is None


def test_restart_env_adds_the_tunable_and_keeps_everything_else():
    env = hostmem.hugepage_env({"PATH": "/bin"}, libc=GLIBC, thp="madvise")
    marker = {k: v for k, v in env.items() if k not in ("PATH", "GLIBC_TUNABLES")}
    assert env["PATH"] == "/bin" and env["GLIBC_TUNABLES"] == hostmem.TUNABLE
    assert list(marker.values()) == ["-"]  # the private marker: GLIBC_TUNABLES was unset
    env = hostmem.hugepage_env(
        {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, libc=("glibc", "2.40"), thp="madvise"
    )
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:" + hostmem.TUNABLE
    assert "=glibc.malloc.arena_max=2" in env.values()  # the original value, for the children
    assert hostmem.hugepages_active(env)


@pytest.mark.parametrize("tunables", ["glibc.malloc.hugetlb=0", "a=1:glibc.malloc.hugetlb=1"])
def test_a_hugetlb_setting_of_the_user_stands(tunables):
    environ = {"GLIBC_TUNABLES": tunables}
    assert hostmem.hugepage_env(environ, libc=GLIBC, thp="madvise") is None


def test_opt_out_keeps_the_process():
    environ = {hostmem.OPT_OUT: "0"}
    assert hostmem.hugepage_env(environ, libc=GLIBC, thp="madvise") is None
    assert hostmem.hugepage_env({hostmem.OPT_OUT: "1"}, libc=GLIBC, thp="madvise") is not None


_ENTRY = st.from_regex(r"glibc\.(malloc|cpu)\.[a-z_]{1,12}=[0-9]{1,4}", fullmatch=True)


@given(st.lists(_ENTRY, max_size=4))
def test_restart_env_appends_exactly_one_hugetlb_entry(entries):
    environ = {"GLIBC_TUNABLES": ":".join(entries)}
    env = hostmem.hugepage_env(environ, libc=GLIBC, thp="madvise")
    if any(e.startswith("glibc.malloc.hugetlb=") for e in entries):
        assert env is None
        return
    assert env["GLIBC_TUNABLES"].split(":") == [*entries, hostmem.TUNABLE]
    # Applying it again changes nothing: a restarted process does not restart again.
    assert hostmem.hugepage_env(env, libc=GLIBC, thp="madvise") is None


def test_hugepages_active_reads_the_last_setting():
    assert not hostmem.hugepages_active({})
    assert not hostmem.hugepages_active({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert hostmem.hugepages_active({"GLIBC_TUNABLES": "x=1:glibc.malloc.hugetlb=1"})
    assert not hostmem.hugepages_active(
        {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1:glibc.malloc.hugetlb=0"}
    )


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert hostmem.thp_mode(str(path)) == "madvise"
    path.write_text("garbage\n")
    assert hostmem.thp_mode(str(path)) is None
    assert hostmem.thp_mode(str(tmp_path / "missing")) is None


@pytest.mark.parametrize(
    "platforms, plugins, cpu",
    [
        (None, [], True),  # plain jaxlib: the CPU
        (None, ["xla_cuda12"], False),  # the CUDA plugin would take over
        (None, ["libtpu"], False),
        ("cpu", ["xla_cuda12"], True),  # forced to the CPU
        ("cpu,cuda", [], True),  # a priority list: the first wins
        ("cuda,cpu", [], False),
        ("tpu", [], False),
        (" , ", ["xla_cuda12"], False),  # blank: as if unset
    ],
)
def test_backend_is_cpu_follows_jax_platforms_then_the_installed_plugins(platforms, plugins, cpu):
    environ = {} if platforms is None else {"JAX_PLATFORMS": platforms}
    assert hostmem.backend_is_cpu(environ, plugins) is cpu


def test_accelerator_plugins_finds_a_jax_plugins_module(tmp_path, monkeypatch):
    (tmp_path / "jax_plugins" / "fake_cuda").mkdir(parents=True)
    (tmp_path / "jax_plugins" / "fake_cuda" / "__init__.py").write_text("")
    assert "fake_cuda" not in hostmem.accelerator_plugins()
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert "fake_cuda" in hostmem.accelerator_plugins()


_LAUNCHER = textwrap.dedent(
    """
    import os, subprocess, sys
    from uticket_jax.launch import hostmem
    import helper

    CHILD = (
        "import os; print(os.environ.get('GLIBC_TUNABLES', '<unset>'),"
        " '_UTICKET_HUGEPAGES_RESTARTED' in os.environ)"
    )
    if __name__ == "__main__":
        print("start", os.environ.get("GLIBC_TUNABLES", ""), sys.argv[1:], flush=True)
        if "--trace" in sys.argv:
            sys.settrace(lambda *a: None)  # what a debugger or coverage does
        if "--library" in sys.argv:
            helper.setup()
        else:
            hostmem.reexec_with_hugepages()
            hostmem.reexec_with_hugepages()  # a second call never restarts again
        sys.settrace(None)
        child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True)
        with open("/proc/self/environ", "rb") as f:
            started_with = hostmem.TUNABLE.encode() in f.read()
        print("run", hostmem.hugepages_active(), started_with, flush=True)
        print("child", child.stdout.strip(), flush=True)
    """
)
_HELPER = (
    "from uticket_jax.launch import hostmem\n\ndef setup():\n    hostmem.reexec_with_hugepages()\n"
)


def _clean_environ():
    drop = ("GLIBC_TUNABLES", hostmem.OPT_OUT, "JAX_PLATFORMS", "COVERAGE_PROCESS_START")
    return {k: v for k, v in os.environ.items() if k not in drop}


def _applies_here(environ):
    """Whether this machine (glibc, THP mode, installed plugins) allows the restart."""
    env = hostmem.hugepage_env(environ, libc=platform.libc_ver(), thp=hostmem.thp_mode())
    return env is not None and hostmem.backend_is_cpu(environ, hostmem.accelerator_plugins())


@pytest.mark.parametrize(
    "python_opts, args, extra_env, restarts",
    [
        ([], ["--flag=1"], {}, True),
        ([], ["--flag=1"], {"JAX_PLATFORMS": "cpu"}, True),
        ([], ["--flag=1"], {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, True),
        ([], ["--flag=1", "--trace"], {}, False),  # under a debugger or coverage
        ([], ["--flag=1", "--library"], {}, False),  # called from a library, not __main__
        (["-i"], ["--flag=1"], {}, False),  # an interactive interpreter
        ([], ["--flag=1"], {"JAX_PLATFORMS": "cuda"}, False),  # the backend is not the CPU
        ([], ["--flag=1"], {hostmem.OPT_OUT: "0"}, False),
    ],
)
def test_the_restart_rules(tmp_path, python_opts, args, extra_env, restarts):
    (tmp_path / "launcher.py").write_text(_LAUNCHER)
    (tmp_path / "helper.py").write_text(_HELPER)
    environ = _clean_environ() | extra_env
    environ["PYTHONPATH"] = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    restarts = restarts and _applies_here(environ)
    proc = subprocess.run(
        [sys.executable, *python_opts, str(tmp_path / "launcher.py"), *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [
        line for line in proc.stdout.splitlines() if line.split()[0] in ("start", "run", "child")
    ]
    before = extra_env.get("GLIBC_TUNABLES", "")
    child = before or "<unset>"
    if restarts:
        restarted = ":".join(t for t in (before, hostmem.TUNABLE) if t)
        assert lines == [
            f"start {before} {args}",
            f"start {restarted} {args}",
            "run True True",
            f"child {child} False",  # neither the tunable nor the marker is inherited
        ]
    else:
        assert lines == [
            f"start {before} {args}",
            "run False False",
            f"child {child} False",
        ]
