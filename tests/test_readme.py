"""The README's Python example runs as printed and prints what it says."""

import contextlib
import io
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AFTER_EXPORT = "# After the export command above:"


@pytest.mark.slow
def test_readme_python_example_runs():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        if block.startswith(AFTER_EXPORT):
            continue  # needs a sweep's workdir: tests/test_experiment.py runs it on one
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, "README.md", "exec"), {})
        for expected in re.findall(r"print\(.*\)[ \t]+# (.*)", block):
            assert expected.strip() in out.getvalue(), (expected, out.getvalue())
