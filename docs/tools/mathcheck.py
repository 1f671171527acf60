"""Checks that the built site renders its maths offline (used by ``docs/conf.py`` and ``scripts/docs``).

The site bundles MathJax under ``_static/mathjax/`` (``scripts/docs`` fetches the npm
package ``mathjax`` once). :func:`static_problems` reads the built HTML: every page that
holds maths must load MathJax from a local file that exists, and no page may load it
from the network. :func:`browser_problems` opens pages in headless Chromium and checks
that MathJax typeset them: each maths element holds a rendered ``mjx-container`` and no
raw ``\\(`` or ``\\[`` delimiters are left on the page.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

#: where the bundle lies inside ``_static`` and which script loads it
MATHJAX_SCRIPT = "mathjax/tex-chtml.js"
_SCRIPT_SRC = re.compile(r"<script[^>]*\bsrc=\"([^\"]*)\"", re.I)
_MATH = re.compile(r"class=\"math[\" ]")


def pages_with_math(html_dir: Path) -> list[Path]:
    """The built pages (sorted) that contain a maths element (``class="math"``)."""
    return sorted(p for p in Path(html_dir).rglob("*.html") if _MATH.search(p.read_text(encoding="utf-8", errors="replace")))


def static_problems(html_dir: Path) -> list[str]:
    """One line per page whose maths cannot render offline; empty when every page can."""
    problems = []
    for page in sorted(Path(html_dir).rglob("*.html")):
        text = page.read_text(encoding="utf-8", errors="replace")
        sources = [s for s in _SCRIPT_SRC.findall(text) if "mathjax" in s.lower()]
        rel = page.relative_to(html_dir)
        remote = [s for s in sources if urlparse(s).scheme or s.startswith("//")]
        if remote:
            problems.append(f"{rel}: loads MathJax from the network ({remote[0]})")
        if not _MATH.search(text):
            continue
        local = [s for s in sources if not urlparse(s).scheme and not s.startswith("//")]
        if not local:
            problems.append(f"{rel}: has maths but loads no local MathJax")
        for src in local:
            target = (page.parent / src.split("?")[0]).resolve()
            if not target.is_file():
                problems.append(f"{rel}: MathJax script {src} does not exist")
    return problems


#: JavaScript run in the page: maths elements, how many hold rendered maths, raw delimiters left
_PROBE = """
const math = Array.from(document.querySelectorAll('.math'));
const rendered = math.filter(e => e.querySelector('mjx-container') !== null).length;
const text = document.body.innerText;
return [math.length, rendered, (text.match(/\\\\\\(|\\\\\\[/g) || []).length];
"""


def browser_problems(driver, pages: list[Path], timeout: float = 30.0) -> list[str]:
    """Open each page in ``driver`` (a Selenium WebDriver) and return one line per page whose maths did not render."""
    problems = []
    for page in pages:
        driver.get(page.resolve().as_uri())
        deadline = time.monotonic() + timeout
        while True:
            n_math, rendered, raw = driver.execute_script(_PROBE)
            if (rendered == n_math and raw == 0) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if n_math == 0 or rendered < n_math or raw:
            problems.append(f"{page.name}: {rendered} of {n_math} maths elements rendered, {raw} raw delimiters left")
    return problems


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1200,900"]


def chromium_driver():
    """A headless Chromium WebDriver, or the reason there is none (``(None, why)``)."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        return None, "headless Chromium is not installed (bash scripts/install_browser.sh)"
    try:  # optional, so imported here: the static check needs no browser
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None, "selenium is not installed"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tempfile.mkdtemp(prefix='nearopt-docs-chromium-')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(60)
    return driver, ""


def main(argv: list[str]) -> int:
    """``mathcheck.py HTML_DIR``: the static check, then the browser check where Chromium is installed; 1 on a problem."""
    html_dir = Path(argv[0] if argv else "docs/_build/html")
    problems = static_problems(html_dir)
    pages = pages_with_math(html_dir)
    if not problems:
        driver, why = chromium_driver()
        if driver is None:
            print(f"docs: maths: {len(pages)} pages load the bundled MathJax; browser check skipped: {why}")
        else:
            try:
                problems = browser_problems(driver, pages)
            finally:
                driver.quit()
            if not problems:
                print(f"docs: maths: rendered by the bundled MathJax in headless Chromium on all {len(pages)} pages with maths")
    for line in problems:
        print(f"docs: maths do not render: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
