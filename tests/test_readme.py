"""The README's library examples run as written."""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_readme_python_example_runs(capsys):
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    blocks = re.findall(r"```python\n(import jax\n.*?)```", text, re.S)
    assert len(blocks) >= 2, "README has no runnable python examples"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "-> 1.0" in out  # the pytree transform on a params tree
    assert "'after': {'utilization': 1.0" in out  # the mask-file entry point
