"""The documentation site builds cleanly and documents the whole public API.

The build tests run `mkdocs build --strict` once (a few seconds) into a temporary folder, as
`scripts/test` does, and inspect the generated HTML and search index.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import saga_orchestrator

ROOT = Path(__file__).resolve().parent.parent

# The modules the API reference renders (docs/reference/*.md). Their public members, as
# mkdocstrings' `filters: public` selects them, must all have docstrings: a member without
# one is silently left out of the reference.
REFERENCE_MODULES = [
    "saga_orchestrator",
    "saga_orchestrator.orchestrator",
    "saga_orchestrator.cli",
    "saga_orchestrator.definitions",
    "saga_orchestrator.state",
    "saga_orchestrator.registry",
    "saga_orchestrator.runtime",
    "saga_orchestrator.protocols",
    "saga_orchestrator.adapters.memory",
    "saga_orchestrator.adapters.sqlite",
    "saga_orchestrator.adapters.postgres",
    # The package re-exports its classes (aliases, which the check below skips) from these:
    "saga_orchestrator.adapters.postgres.repository",
    "saga_orchestrator.adapters.postgres.idempotency",
    "saga_orchestrator.adapters.redis",
    "saga_orchestrator.adapters.rabbitmq",
    "saga_orchestrator.adapters.nats",
    "saga_orchestrator.worker",
    "saga_orchestrator.outbox",
    "saga_orchestrator.errors",
    "saga_orchestrator.retry",
    "saga_orchestrator.events",
    "saga_orchestrator.serialization",
    "saga_orchestrator.testing",
    "saga_orchestrator.testing.contract",
    "saga_orchestrator.observability",
    "saga_orchestrator.observability.prometheus",
    "saga_orchestrator.observability.otel",
]


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_home_page_example_is_the_readme_first_saga() -> None:
    """docs/index.md includes docs/snippets/first_saga.py, which is the README's first saga
    verbatim (and tests/test_readme.py runs that)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    snippets = ROOT / "docs" / "snippets"
    module = (snippets / "first_saga.py").read_text(encoding="utf-8")
    script = (snippets / "first_saga_run.py").read_text(encoding="utf-8")
    assert _python_blocks(readme)[:2] == [module, script]
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    assert '--8<-- "docs/snippets/first_saga.py"' in index
    assert '--8<-- "docs/snippets/first_saga_run.py"' in index


def test_readme_links_to_existing_screenshots() -> None:
    """The README's Documentation section links the screenshots that `scripts/screenshots`
    takes, and they are in the repository."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shots = re.findall(r"\]\((docs/assets/screenshot-[a-z]+\.png)\)", readme)
    names = ("home", "tutorial", "concepts", "reference", "search")
    assert sorted(shots) == sorted(f"docs/assets/screenshot-{name}.png" for name in names)
    for shot in shots:
        assert (ROOT / shot).is_file(), shot


def test_every_public_member_of_the_reference_has_a_docstring() -> None:
    """mkdocstrings shows only documented members, so an undocumented one would vanish."""
    griffe = pytest.importorskip("griffe")
    package = griffe.load("saga_orchestrator", search_paths=[str(ROOT / "src")])
    missing: list[str] = []

    def check(obj: Any) -> None:
        for name, member in obj.members.items():
            if member.is_alias or not member.is_public or member.is_module:
                continue
            if name != "__init__" and not member.docstring:
                missing.append(member.path)
            if member.is_class:
                check(member)

    for path in REFERENCE_MODULES:
        module = package[path.removeprefix("saga_orchestrator.")] if "." in path else package
        assert module.docstring, f"module {path} has no docstring"
        check(module)
    assert missing == []


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The site built with `mkdocs build --strict`, and the build's output."""
    for tool in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        pytest.importorskip(tool)
    out = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    output = build.stdout + build.stderr
    assert build.returncode == 0, output
    return out, output


@pytest.mark.slow
def test_site_builds_strict_without_warnings(site: tuple[Path, str]) -> None:
    """`mkdocs build --strict` succeeds and logs no warning at all."""
    out, output = site
    assert "WARNING" not in output, output
    assert (out / "index.html").is_file()


@pytest.mark.slow
def test_home_page_shows_the_first_saga(site: tuple[Path, str]) -> None:
    """The snippet is included, not left as a `--8<--` line."""
    html = (site[0] / "index.html").read_text(encoding="utf-8")
    assert "TransferSaga" in html
    assert "--8&lt;--" not in html
    assert "--8<--" not in html


@pytest.mark.slow
def test_reference_documents_every_public_name(site: tuple[Path, str]) -> None:
    """Each name of `saga_orchestrator.__all__` is listed on the reference's index page and
    documented in full (a heading with its anchor) on its module's page."""
    reference = site[0] / "reference"
    index = (reference / "index.html").read_text(encoding="utf-8")
    pages = "\n".join(p.read_text(encoding="utf-8") for p in reference.rglob("*.html"))
    for name in saga_orchestrator.__all__:
        obj = getattr(saga_orchestrator, name)
        assert name in index, f"{name} is not listed in reference/index"
        anchor = f'id="{obj.__module__}.{name}"'
        assert anchor in pages, f"{name} has no documentation ({anchor}) in the reference"


@pytest.mark.slow
def test_search_index_contains_the_tutorial(site: tuple[Path, str]) -> None:
    """The search index exists and covers the tutorial."""
    index_file = site[0] / "search" / "search_index.json"
    assert index_file.is_file()
    docs = json.loads(index_file.read_text(encoding="utf-8"))["docs"]
    tutorial = [doc for doc in docs if doc["location"].startswith("tutorial/")]
    assert tutorial, "the tutorial is not in the search index"
    assert sum(len(doc["text"]) for doc in tutorial) > 1000
