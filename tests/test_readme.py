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


FIRST_SAGA_OUTPUT = [
    "refunded 25.00",
    "compensated - credit: CardDeclined: receiving account closed",
]
"""What the README says running the first saga prints."""


def first_saga_files() -> dict[str, str]:
    """The README's first saga, as the files it tells users to save: the module
    ``transfers.py`` and the script ``run.py`` (run with ``python run.py``)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## A first saga", 1)[1].split("\n## ", 1)[0]
    names = re.findall(r"`([a-z_]+\.py)`", section)
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert names[:2] == ["transfers.py", "run.py"], names
    assert len(blocks) == 2, blocks
    return dict(zip(names[:2], blocks, strict=True))


def test_first_saga_prints_what_the_readme_says(tmp_path: Path) -> None:
    """The 'A first saga' files, saved and run as the README says, compensate and print the
    documented lines, with nothing on stderr (its data class is in a module: no warning)."""
    for name, code in first_saga_files().items():
        (tmp_path / name).write_text(code, encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "run.py"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == FIRST_SAGA_OUTPUT
    assert run.stderr == ""


def test_a_data_class_in_main_warns_with_the_fix(tmp_path: Path) -> None:
    """The same saga pasted into one script (its data class in __main__) still runs, and
    execute() warns, once, that another process could not import the class, and what to do."""
    files = first_saga_files()
    script = files["transfers.py"] + "\n\nimport anyio\n\nanyio.run(main)\n"
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == FIRST_SAGA_OUTPUT
    assert run.stderr.count("MainModuleDataWarning") == 1, run.stderr
    assert "TransferData is defined in __main__" in run.stderr
    assert "Define it in a module and import it from your script" in run.stderr


@pytest.mark.parametrize("index", range(2, len(_python_blocks())))
def test_other_blocks_execute(index: int, tmp_path: Path) -> None:
    """Every other Python block at least runs without error."""
    code = _python_blocks()[index]
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
