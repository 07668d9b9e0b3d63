"""uticket_jax.launch.hostmem: when the glibc huge-page tunable applies; the one-time restart."""

import os
import platform
import subprocess
import sys

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
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": hostmem.TUNABLE}
    env = hostmem.hugepage_env(
        {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, libc=("glibc", "2.40"), thp="madvise"
    )
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:" + hostmem.TUNABLE
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


_SCRIPT = """
import os, sys
from uticket_jax.launch import hostmem
print("start", os.environ.get("GLIBC_TUNABLES", ""), sys.argv[1:], flush=True)
hostmem.reexec_with_hugepages()
print("run", hostmem.hugepages_active(), flush=True)
"""


def test_reexec_restarts_once_with_the_same_arguments():
    environ = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hostmem.OPT_OUT)}
    applies = hostmem.hugepage_env(environ, libc=platform.libc_ver(), thp=hostmem.thp_mode())
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, "--flag=1"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    if applies is None:  # not glibc >= 2.35 with THP in madvise mode: the process just goes on
        assert lines == ["start  ['--flag=1']", "run False"]
    else:
        assert lines == [
            "start  ['--flag=1']",
            f"start {hostmem.TUNABLE} ['--flag=1']",
            "run True",
        ]
    environ[hostmem.OPT_OUT] = "0"
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=environ, capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.splitlines() == ["start  []", "run False"]
