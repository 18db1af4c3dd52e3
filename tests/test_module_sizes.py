"""Every module under src/ stays at most MAX_LINES long: a module holds one idea, and one
that grows past that is split along its seams (as orchestrator.py, serialization and the
contract kit were)."""

from __future__ import annotations

from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
MAX_LINES = 600


def _line_count(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_no_module_is_longer_than_the_limit() -> None:
    """``src/**/*.py`` has modules, and none exceeds MAX_LINES lines; the offenders are
    listed with their counts."""
    modules = sorted(SRC.rglob("*.py"))
    assert len(modules) > 10, f"no modules found under {SRC}"
    offenders = {
        str(path.relative_to(SRC)): count
        for path in modules
        if (count := _line_count(path)) > MAX_LINES
    }
    assert offenders == {}, f"modules over {MAX_LINES} lines: {offenders}"
