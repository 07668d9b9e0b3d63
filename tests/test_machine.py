"""The machine facts a run records (uticket_jax/launch/machine.py)."""

import json

import hypothesis.strategies as st
from hypothesis import given

from uticket_jax.launch import machine

X86 = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480C
stepping\t: 8
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_fp16 amx_tile

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: another processor's block
flags\t\t: fpu sse4_2
"""

ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes sve
CPU implementer\t: 0x41
CPU part\t: 0xd40
"""


def _write(tmp_path, text):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return str(path)


def test_cpu_facts_of_an_x86_cpuinfo_read_the_first_processor_only(tmp_path):
    facts = machine.cpu_facts(_write(tmp_path, X86))
    assert facts == {
        "vendor": "GenuineIntel",
        "model": "Intel(R) Xeon(R) Platinum 8480C",
        "family": "6/143/8",
        "simd": ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_fp16", "amx_tile"],
    }


def test_cpu_facts_of_an_arm_cpuinfo(tmp_path):
    facts = machine.cpu_facts(_write(tmp_path, ARM))
    assert facts == {
        "vendor": "0x41",
        "model": "0xd40",
        "family": None,
        "simd": ["fp", "asimd", "evtstrm", "aes", "sve"],
    }


def test_cpu_facts_without_cpuinfo(tmp_path):
    facts = machine.cpu_facts(str(tmp_path / "missing"))
    assert facts["vendor"] is None and facts["family"] is None and facts["simd"] is None


def test_describe_is_json_and_names_this_process():
    entry = machine.describe(resume=True)
    assert json.loads(json.dumps(entry)) == entry
    assert entry["resume"] is True and entry["backend"] == "cpu"
    assert entry["device_count"] >= 1 and entry["process_count"] == 1
    assert entry["packages"]["jax"] and entry["packages"]["jaxlib"]
    line = machine.summary(entry)
    assert f"jax {entry['packages']['jax']}" in line and "cpu:" in line
    # Two starts on the same machine differ only where nothing bears on the figures.
    later = machine.describe(resume=False)
    assert machine.differences(entry, later) == []


def test_differences_name_nested_and_missing_fields():
    first = {
        "started": "a",
        "argv": ["x"],
        "cpu": {"model": "A", "simd": ["avx2"]},
        "packages": {"jaxlib": "0.10.2", "numpy": "2.4"},
        "cores": 2,
    }
    now = {
        "started": "b",
        "argv": ["y"],
        "resume": True,
        "cpu": {"model": "B", "simd": ["avx2"]},
        "packages": {"jaxlib": "0.10.3"},
        "cores": 2,
        "hugepages": True,
    }
    assert machine.differences(first, now) == [
        "cpu.model",
        "hugepages",
        "packages.jaxlib",
        "packages.numpy",
    ]


_values = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=4))
_entries = st.recursive(
    st.dictionaries(st.text(min_size=1, max_size=3), _values, max_size=4),
    lambda inner: st.dictionaries(st.text(min_size=1, max_size=3), inner, max_size=4),
    max_leaves=12,
)


@given(_entries, _entries)
def test_differences_are_symmetric_and_empty_only_for_equal_entries(a, b):
    ab = machine.differences(a, b)
    assert ab == machine.differences(b, a)
    assert machine.differences(a, a) == []
    assert (ab == []) == (_compared(a) == _compared(b))


def _compared(entry):
    return {k: v for k, v in entry.items() if k not in ("started", "resume", "argv")}
