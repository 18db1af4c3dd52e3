"""The README's Python code runs as written, so it cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_first_saga_prints_what_the_readme_says(tmp_path: Path) -> None:
    """The 'A first saga' block compensates and prints the documented lines."""
    code = _python_blocks()[0]
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "refunded 25.00",
        "compensated - credit: CardDeclined: receiving account closed",
    ]


@pytest.mark.parametrize("index", range(1, len(_python_blocks())))
def test_other_blocks_execute(index: int, tmp_path: Path) -> None:
    """Every other Python block at least runs without error."""
    code = _python_blocks()[index]
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
