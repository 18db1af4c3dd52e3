"""Retake the documentation screenshots in docs/assets/ with headless Chromium.

Builds the site (`mkdocs build --strict`, into a temporary folder), serves it over HTTP on a
free port of 127.0.0.1 (Material's search runs in a web worker, which a `file://` page cannot
start), opens each page at 1280x800 and saves a PNG of the viewport:

    screenshot-home.png       the home page
    screenshot-tutorial.png   the tutorial
    screenshot-concepts.png   a concept page (compensation rules)
    screenshot-reference.png  an API reference page (the orchestrator)
    screenshot-search.png     the home page with results for "compensation" in the search box

Needs Chromium and its driver (Debian: `apt-get install chromium chromium-driver`) and
Selenium (the `screenshots` extra). SAGA_CHROMIUM and SAGA_CHROMEDRIVER override the paths
found on PATH. `tests/test_docs_browser.py` uses the helpers below too.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "docs" / "assets"
WIDTH, HEIGHT = 1280, 800
TIMEOUT = 30.0
"""Seconds to wait for a page, its fonts or search results."""

PAGES = {
    "screenshot-home.png": "",
    "screenshot-tutorial.png": "tutorial/",
    "screenshot-concepts.png": "concepts/compensation/",
    "screenshot-reference.png": "reference/orchestrator/",
}
SEARCH_SHOT = "screenshot-search.png"
SEARCH_QUERY = "compensation"


def browser_paths() -> tuple[str, str] | str:
    """(chromium, chromedriver), or the reason why they cannot be used."""
    chromium = os.environ.get("SAGA_CHROMIUM") or shutil.which("chromium")
    driver = os.environ.get("SAGA_CHROMEDRIVER") or shutil.which("chromedriver")
    if not (chromium and driver and os.access(chromium, os.X_OK) and os.access(driver, os.X_OK)):
        return (
            f"Chromium and its driver are needed, found chromium={chromium}, "
            f"chromedriver={driver} (Debian: apt-get install chromium chromium-driver)"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[screenshots]')"
    return chromium, driver


def build_site(out: Path) -> None:
    """`mkdocs build --strict` into `out`; raises with mkdocs' output if it fails."""
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
    if build.returncode != 0:
        raise RuntimeError(f"mkdocs build failed:\n{build.stdout}{build.stderr}")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve `directory` over HTTP on a free port of 127.0.0.1; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="docs-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


@contextlib.contextmanager
def chromium(
    width: int = WIDTH, height: int = HEIGHT, *, mobile: bool = False
) -> Iterator[WebDriver]:
    """Headless Chromium whose viewport is exactly `width` x `height` CSS pixels at 1x."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = browser_paths()
    if isinstance(paths, str):
        raise RuntimeError(paths)
    binary, driver_path = paths
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    options.add_argument("--headless=new")
    options.add_argument(f"--window-size={width},{height}")
    options.add_argument("--disable-dev-shm-usage")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium refuses to run as root with it
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        driver.set_page_load_timeout(TIMEOUT)
        set_viewport(driver, width, height, mobile=mobile)
        yield driver
    finally:
        driver.quit()


def set_viewport(driver: WebDriver, width: int, height: int, *, mobile: bool = False) -> None:
    """Make the viewport `width` x `height` CSS pixels at 1x (`mobile`: as a phone does)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )


def open_page(driver: WebDriver, url: str) -> None:
    """Load `url` and wait until its fonts are ready."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, TIMEOUT).until(
        lambda d: d.execute_script(
            "return document.readyState === 'complete' && document.fonts.status === 'loaded'"
        )
    )


def search(driver: WebDriver, query: str) -> list[str]:
    """Type `query` into the open page's search box; returns the result links (hrefs) once
    the result list is not empty, or raises TimeoutException."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    if not driver.find_element(By.CSS_SELECTOR, "input.md-search__input").is_displayed():
        # Narrow viewports show a search button instead of the box.
        driver.find_element(By.CSS_SELECTOR, "label.md-header__button[for='__search']").click()
    box = driver.find_element(By.CSS_SELECTOR, "input.md-search__input")
    box.click()
    box.send_keys(query)
    links: list[str] = WebDriverWait(driver, TIMEOUT).until(
        lambda d: (
            d.execute_script(
                "return [...document.querySelectorAll('.md-search-result__item > a')]"
                ".map(a => a.href)"
            )
            or False
        )
    )
    return links


def take_screenshots(site: Path, assets: Path) -> list[Path]:
    """Save the screenshots of the built `site` into `assets`; returns their paths."""
    saved: list[Path] = []
    with serve(site) as base, chromium() as driver:
        for name, page in PAGES.items():
            open_page(driver, base + page)
            driver.save_screenshot(str(assets / name))
            saved.append(assets / name)
        open_page(driver, base)
        search(driver, SEARCH_QUERY)
        driver.execute_script("document.activeElement.blur()")  # no blinking caret
        driver.save_screenshot(str(assets / SEARCH_SHOT))
        saved.append(assets / SEARCH_SHOT)
    return saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--site", type=Path, help="an already built site to use instead of building one"
    )
    parser.add_argument(
        "--out", type=Path, default=ASSETS, help="where the PNGs go (default: docs/assets)"
    )
    args = parser.parse_args(argv)
    paths = browser_paths()
    if isinstance(paths, str):
        print(f"screenshots: {paths}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="saga-docs-") as tmp:
        site = args.site
        if site is None:
            site = Path(tmp) / "site"
            print("screenshots: building the site (mkdocs build --strict)", file=sys.stderr)
            build_site(site)
        for path in take_screenshots(site, args.out):
            print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
