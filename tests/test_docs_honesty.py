"""Keep the docs' statements about the library true: no page calls a shipped feature missing,
every CLI command is documented, and the small CLI and constructor promises hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import saga_orchestrator
from saga_orchestrator import SQLiteSagaRepository
from saga_orchestrator.cli import main
from saga_orchestrator.cli.parser import build_parser

ROOT = Path(__file__).resolve().parent.parent
PHRASES = [
    line.strip().lower()
    for line in (ROOT / "tests/data/stale_phrases.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]
PAGES = sorted(
    [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "src").rglob("*.py")],
)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_calls_a_shipped_feature_missing(page: Path) -> None:
    """None of the phrases in tests/data/stale_phrases.txt appears (changelog excepted)."""
    if page.name in {"CHANGELOG.md", "changelog.md"}:
        return
    text = re.sub(r"\s+", " ", page.read_text().lower())
    found = [phrase for phrase in PHRASES if phrase in text]
    assert not found, f"{page.relative_to(ROOT)} says {found}"


def _commands() -> list[str]:
    parser = build_parser()
    [subparsers] = [a for a in parser._actions if a.dest == "command"]
    return sorted(subparsers.choices)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "document",
    ["README.md", "docs/how-to/operating.md", "src/saga_orchestrator/cli/__init__.py"],
)
def test_every_cli_command_is_documented(document: str) -> None:
    """Each command of the parser is named in the README, the operating how-to's synopsis
    and the cli module's docstring."""
    text = (ROOT / document).read_text()
    missing = [c for c in _commands() if not re.search(rf"(`|\b){c}(`|\b)", text)]
    assert "worker" in _commands()
    assert not missing, f"{document} does not mention {missing}"


def test_version_flag_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"saga-orchestrator {saga_orchestrator.__version__}\n"


@pytest.mark.parametrize(
    "url", ["postgresql://app@db:5432/app", "postgres://x/y", "host=db dbname=app"]
)
def test_a_postgres_url_without_app_gets_a_hint(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 2 and a hint to pass --app, instead of "no such file"."""
    assert main(["--db", url, "list"]) == 2
    assert "needs --app MODULE:CALLABLE" in capsys.readouterr().err


@pytest.mark.parametrize("path", [None, 42, object()])
def test_sqlite_repository_path_must_be_a_path(path: object, tmp_path: Path) -> None:
    """`SQLiteSagaRepository(None)` is a TypeError, not a file named "None"."""
    with pytest.raises(TypeError, match=r"must be a str or a pathlib\.Path"):
        SQLiteSagaRepository(path)  # type: ignore[arg-type]
    assert not (Path.cwd() / "None").exists()


def test_postgres_on_trio_says_asyncio_only() -> None:
    """Under trio the PostgreSQL repository says so in the library's words, before any I/O."""
    import anyio

    from saga_orchestrator.adapters.postgres import PostgresSagaRepository

    async def main() -> None:
        repository = PostgresSagaRepository("postgresql://nobody@127.0.0.1:1/none")
        with pytest.raises(RuntimeError, match=r"run on asyncio only .* not on trio"):
            await repository.open()

    anyio.run(main, backend="trio")
