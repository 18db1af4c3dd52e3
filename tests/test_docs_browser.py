"""The documentation site in a real browser: search finds pages, long code lines scroll visibly.

The site is built once (`mkdocs build --strict`), served over HTTP on a free port and opened
in headless Chromium through Selenium, with the helpers of scripts/screenshots.py. Without
Chromium, its driver or Selenium the tests skip and say why (they fail instead under
SAGA_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import html
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import service_unavailable

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _load_screenshots() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "docs_screenshots", ROOT / "scripts" / "screenshots.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shots = _load_screenshots()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built with `mkdocs build --strict`."""
    for tool in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        pytest.importorskip(tool)
    paths = shots.browser_paths()
    if isinstance(paths, str):
        service_unavailable(paths)
    out = tmp_path_factory.mktemp("docs-browser") / "site"
    shots.build_site(out)
    return out


@pytest.fixture(scope="module")
def base_url(site: Path) -> Iterator[str]:
    """The site served over HTTP on a free port of 127.0.0.1."""
    with shots.serve(site) as url:
        yield url


@pytest.fixture(scope="module")
def browser(site: Path) -> Iterator[Any]:
    """Headless Chromium, 1280x800 unless a test changes it."""
    with shots.chromium() as driver:
        yield driver


@pytest.fixture
def driver(browser: Any) -> Any:
    """The browser at 1280x800 again when the test is done."""
    yield browser
    shots.set_viewport(browser, shots.WIDTH, shots.HEIGHT)


def _longest_code_line(site: Path) -> tuple[str, int]:
    """The page (its path in the site) that holds the longest line of any code block."""
    best = ("", 0)
    for page in site.rglob("index.html"):
        for block in re.findall(r"<pre[^>]*>(.*?)</pre>", page.read_text("utf-8"), re.S):
            text = html.unescape(re.sub(r"<[^>]+>", "", block))
            longest = max(len(line) for line in text.split("\n"))
            if longest > best[1]:
                best = (page.parent.relative_to(site).as_posix() + "/", longest)
    path, length = best
    return ("" if path == "./" else path), length


@pytest.mark.parametrize("query", ["trip", "recover"])
def test_search_over_http_lists_results(driver: Any, base_url: str, query: str) -> None:
    """Typing a word into the search box lists matching pages; the tutorial is among them."""
    shots.open_page(driver, base_url)
    links = shots.search(driver, query)
    assert links
    assert all(link.startswith(base_url) for link in links), links
    assert any(link.startswith(f"{base_url}tutorial/") for link in links), links


def test_search_over_http_on_a_narrow_viewport(driver: Any, base_url: str) -> None:
    """At 390 px the search button opens the same search."""
    shots.set_viewport(driver, 390, 844, mobile=True)
    shots.open_page(driver, base_url)
    links = shots.search(driver, "trip")
    assert any(link.startswith(f"{base_url}tutorial/") for link in links), links


def test_search_is_hidden_on_a_file_url(driver: Any, site: Path) -> None:
    """Opened from disk (file://) the site has no search: Material hides the search box, as
    its index cannot be loaded there. The README says to serve the site for search."""
    from selenium.webdriver.support.ui import WebDriverWait

    shots.open_page(driver, (site / "index.html").as_uri())
    WebDriverWait(driver, shots.TIMEOUT).until(
        lambda d: d.execute_script("return document.querySelector('.md-search').hidden")
    )


_MEASURE = """
const code = [...document.querySelectorAll('.md-content pre > code')]
  .reduce((a, b) => (b.scrollWidth > a.scrollWidth ? b : a));
window.scrollBy(0, code.getBoundingClientRect().top - innerHeight / 2);
code.scrollLeft = arguments[0] ? code.scrollWidth : 0;
const style = getComputedStyle(code);
const rect = code.getBoundingClientRect();
return {
  overflowX: style.overflowX, whiteSpace: style.whiteSpace,
  scrollbarWidth: style.scrollbarWidth,
  scrollWidth: code.scrollWidth, clientWidth: code.clientWidth,
  scrollbar: code.offsetHeight - code.clientHeight,
  top: rect.top, left: rect.left, right: rect.right, innerHeight,
};
"""

_PIXELS = """
const [png, xs, y, done] = arguments;
const image = new Image();
image.onload = () => {
  const canvas = document.createElement('canvas');
  canvas.width = image.width;
  canvas.height = image.height;
  const context = canvas.getContext('2d');
  context.drawImage(image, 0, 0);
  done(xs.map(x => {
    const [r, g, b] = context.getImageData(x, y, 1, 1).data;
    return r + g + b;
  }));
};
image.src = 'data:image/png;base64,' + png;
"""


def _measure(driver: Any, *, scrolled_to_end: bool) -> tuple[dict[str, Any], list[int]]:
    """The widest code block's box and style, and the brightness (r+g+b) of its left edge,
    middle and right edge, 3 px inside its top padding (where no code is drawn)."""
    box: dict[str, Any] = driver.execute_script(_MEASURE, scrolled_to_end)
    assert 60 < box["top"] < box["innerHeight"] - 20, box  # below the header, on screen
    y = round(box["top"]) + 3
    xs = [round(box["left"]) + 2, round((box["left"] + box["right"]) / 2), round(box["right"]) - 3]
    shade: list[int] = driver.execute_async_script(
        _PIXELS, driver.get_screenshot_as_base64(), xs, y
    )
    return box, shade


@pytest.mark.parametrize(("width", "height", "mobile"), [(1280, 800, False), (390, 844, True)])
def test_long_code_lines_scroll_visibly(
    driver: Any, site: Path, base_url: str, width: int, height: int, mobile: bool
) -> None:
    """The block with the longest line scrolls sideways (not cut off, not wrapped), and shows
    it: a shadow on each side with more code beyond it, which is there with or without
    scrollbars (phones overlay theirs); and on the desktop a scrollbar."""
    page, length = _longest_code_line(site)
    assert length > 100
    shots.set_viewport(driver, width, height, mobile=mobile)
    shots.open_page(driver, base_url + page)

    box, (left, middle, right) = _measure(driver, scrolled_to_end=False)
    assert box["overflowX"] in ("auto", "scroll"), box
    assert box["whiteSpace"] == "pre", box
    assert box["scrollWidth"] > box["clientWidth"], box
    assert right < middle - 60, ("no shadow where the line goes on", left, middle, right)
    assert abs(left - middle) < 10, ("a shadow on the side with nothing beyond", left, middle)
    if not mobile:
        assert box["scrollbarWidth"] == "auto", box
        assert box["scrollbar"] > 0, ("no scrollbar drawn", box)

    box, (left, middle, right) = _measure(driver, scrolled_to_end=True)
    assert left < middle - 60, ("no shadow where the line began", left, middle, right)
    assert abs(right - middle) < 10, ("a shadow after the end of the line", middle, right)
