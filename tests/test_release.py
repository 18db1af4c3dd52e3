"""Release hygiene: one version, a changelog that names it, and the PyPI description.

The version lives in pyproject.toml only; the package reads it from its metadata. CHANGELOG.md
follows Keep a Changelog: ``## [Unreleased]`` on top, a dated section for the version, link
references at the bottom. The PyPI description is README.md cut at its two
``pypi-description`` markers with relative links made absolute (hatch-fancy-pypi-readme,
configured in pyproject.toml); the tests read it from the built wheel's METADATA.
"""

from __future__ import annotations

import re
import tomllib
import zipfile
from datetime import date
from email.message import Message
from email.parser import HeaderParser
from pathlib import Path

import pytest

import saga_orchestrator

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
VERSION: str = PYPROJECT["project"]["version"]
REPOSITORY = "https://github.com/saga-orchestrator/saga-orchestrator"
CHANGELOG = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")
PITCH = "**Durable sagas for Python services.**"

# Markdown links and images `[text](target)`, reference definitions `[label]: target`, and
# HTML `src=`/`href=` attributes: every target a reader on PyPI could follow.
LINK_TARGETS = [
    re.compile(r"\]\(\s*<?([^)\s>]+)"),
    re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M),
    re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", re.I),
]


# ------------------------------------------------------------------------------------ version


def test_version_is_read_from_the_package_metadata() -> None:
    """`__version__` is pyproject's version (the editable install's metadata), not a copy."""
    assert saga_orchestrator.__version__ == VERSION
    source = (ROOT / "src" / "saga_orchestrator" / "__init__.py").read_text(encoding="utf-8")
    assert VERSION not in source


def test_no_document_hard_codes_the_library_version() -> None:
    """Install lines and examples say `saga_orchestrator-*.whl`, never this version's name."""
    named = re.compile(r"saga[-_]orchestrator(?:-|==|\s)v?\d+\.\d+(?:\.\d+)?", re.I)
    documents = [
        ROOT / "README.md",
        ROOT / "RELEASING.md",
        ROOT / "examples" / "order_fulfillment" / "README.md",
        *(ROOT / "docs").rglob("*.md"),
    ]
    offenders = [
        f"{path.relative_to(ROOT)}: {match[0]}"
        for path in documents
        for match in named.finditer(path.read_text(encoding="utf-8"))
    ]
    assert not offenders


# ---------------------------------------------------------------------------------- changelog


def _headings() -> list[str]:
    return re.findall(r"^## (.+)$", CHANGELOG, re.M)


def _link_references() -> dict[str, str]:
    return dict(re.findall(r"^\[([^\]]+)\]: (\S+)$", CHANGELOG, re.M))


def test_changelog_opens_with_unreleased_and_links_it() -> None:
    """`## [Unreleased]` is the first section; its link compares the version's tag to HEAD."""
    assert _headings()[0] == "[Unreleased]"
    assert _link_references()["Unreleased"] == f"{REPOSITORY}/compare/v{VERSION}...HEAD"
    tail = CHANGELOG.rstrip().splitlines()[-2:]
    assert all(line.startswith("[") for line in tail), "link references go at the bottom"


def test_changelog_has_a_dated_section_for_the_version() -> None:
    """`## [VERSION] - YYYY-MM-DD` (a real date) comes right after Unreleased, with its link."""
    headings = _headings()
    assert len(headings) >= 2
    match = re.fullmatch(rf"\[{re.escape(VERSION)}\] - (\d{{4}}-\d\d-\d\d)", headings[1])
    assert match is not None, f"the newest release section is {headings[1]!r}"
    date.fromisoformat(match[1])  # a valid calendar date, or ValueError
    reference = _link_references()[VERSION]
    assert reference.startswith(REPOSITORY)
    assert reference.endswith(f"v{VERSION}")


# -------------------------------------------------------------------------- PyPI description


@pytest.fixture(scope="module")
def metadata(wheel: Path) -> Message:
    """The built wheel's METADATA: headers, and the description as the body."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return HeaderParser().parsestr(archive.read(name).decode("utf-8"))


@pytest.fixture(scope="module")
def description(metadata: Message) -> str:
    body = metadata.get_payload()
    assert isinstance(body, str)
    return body


def test_the_readme_still_opens_with_the_two_commands() -> None:
    """The repository's README is for a checkout: its first block runs the example, then tests."""
    first_block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert first_block is not None
    assert README.index(first_block[0]) < README.index(PITCH)
    commands = [line.split()[0] for line in first_block[1].splitlines()]
    assert commands == ["./scripts/example", "./scripts/test"]


@pytest.mark.slow
def test_wheel_metadata_has_the_version_and_markdown(metadata: Message) -> None:
    assert metadata["Version"] == VERSION
    assert metadata["Description-Content-Type"] == "text/markdown"


@pytest.mark.slow
def test_pypi_description_starts_with_the_pitch_then_install(description: str) -> None:
    """The pitch first; no contributor command (`./scripts/...`) before the install section."""
    assert description.lstrip().startswith(PITCH)
    install = description.index("\n## Install\n")
    assert "./scripts/" not in description[:install]
    assert "pip install saga-orchestrator\n" in description[install:]
    assert "git+https://github.com/saga-orchestrator/saga-orchestrator" in description
    assert "<!--" not in description  # the markers are cut away
    assert "\n## Development\n" not in description  # the contributor part stays on GitHub


@pytest.mark.slow
def test_pypi_description_is_the_readme_section_for_section(description: str) -> None:
    """Every heading of the README between the markers is there, in order: nothing drifts."""
    start = README.index("<!-- pypi-description-start -->")
    end = README.index("<!-- pypi-description-end -->")
    headings = re.findall(r"^##+ .+$", README[start:end], re.M)
    assert len(headings) >= 5
    assert re.findall(r"^##+ .+$", description, re.M) == headings
    first_saga = re.search(r"```python\n.*?```", README, re.S)
    assert first_saga is not None
    assert first_saga[0] in description


@pytest.mark.slow
def test_pypi_description_has_no_relative_links(description: str) -> None:
    """Every link and image is absolute, and each one into the repository names a real file."""
    prose = re.sub(r"^```.*?^```", "", description, flags=re.S | re.M)  # code is not linked
    prose = re.sub(r"`[^`\n]*`", "", prose)
    targets = [m for pattern in LINK_TARGETS for m in pattern.findall(prose)]
    assert len(targets) >= 8  # the README's links to docs/, deploy/, bench/, screenshots
    relative = [t for t in targets if not t.startswith("https://")]
    assert not relative
    files = []
    for target in targets:
        for prefix in (
            f"{REPOSITORY}/blob/main/",
            "https://raw.githubusercontent.com/saga-orchestrator/saga-orchestrator/main/",
        ):
            if target.startswith(prefix):
                files.append(target.removeprefix(prefix).split("#")[0])
    assert any(f.endswith(".png") for f in files)
    missing = [f for f in files if not (ROOT / f).is_file()]
    assert not missing


def test_the_sdist_ships_every_file_the_description_is_built_from() -> None:
    """A wheel built from the sdist gets the same description: its sources are in the sdist."""
    hook = PYPROJECT["tool"]["hatch"]["metadata"]["hooks"]["fancy-pypi-readme"]
    include = PYPROJECT["tool"]["hatch"]["build"]["targets"]["sdist"]["include"]
    sources = [f"/{fragment['path']}" for fragment in hook["fragments"] if "path" in fragment]
    assert sources == ["/README.md"]
    assert set(sources) <= set(include)
    assert "readme" in PYPROJECT["project"]["dynamic"]
    assert "readme" not in PYPROJECT["project"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for fragment in hook["fragments"]:
        for key in ("start-after", "end-before"):
            if key in fragment:
                assert readme.count(fragment[key]) == 1, fragment[key]
