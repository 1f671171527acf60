"""The HTML report in a real browser: headless Chromium loads every figure and shows the check tables.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``bash
scripts/install_browser.sh``; CI runs it first). Skips, saying why, only when
they are not installed.
"""

import shutil
import tempfile
from pathlib import Path

import pytest

from nearopt.pipeline import reproduce

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,900",
]


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[dev])")
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip("headless Chromium is not installed: run `bash scripts/install_browser.sh` (Debian packages chromium, chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="nearopt-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_report_renders_with_every_figure_and_check_table(tmp_path, browser):
    study = reproduce(["selftest"], overrides={"selftest": {"sizes": [100, 1000], "seeds": 4}}, out=tmp_path, jobs=1, quiet=True)
    n_checks = len(study.runs[0].checks)
    browser.get((tmp_path / "report.html").as_uri())

    assert "nearopt reproduction report" in browser.title
    images = browser.find_elements("css selector", "img")
    assert len(images) == 1
    loaded = browser.execute_script("return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0)")
    assert loaded == [True]
    width = browser.execute_script("return document.images[0].naturalWidth")
    assert width > 300  # a real figure, not an icon

    browser.find_element("xpath", "//button[text()='expand all']").click()  # passing sections start closed
    rows = browser.find_elements("css selector", "table.checks tr")
    assert len(rows) == 1 + n_checks  # header + one row per check
    headers = [th.text for th in rows[0].find_elements("css selector", "th")]
    assert headers[:5] == ["check", "expected", "measured", "tolerance", "result"]
    assert all(r.find_elements("css selector", "td")[4].text == "PASS" for r in rows[1:])
    summary = browser.find_elements("css selector", "table.summary tr")
    assert len(summary) == 2 and "4/4" in summary[1].text
    # The PDF next to the figure is linked and exists.
    pdf_links = [a.get_attribute("href") for a in browser.find_elements("css selector", "figcaption a") if a.text == "PDF"]
    assert len(pdf_links) == 1 and Path(pdf_links[0].removeprefix("file://")).is_file()


def test_contents_link_opens_its_collapsed_section(tmp_path, browser):
    """Each experiment is a <details> section, closed when it passes; its entry in the contents opens it."""
    reproduce(["selftest"], overrides={"selftest": {"sizes": [100, 1000], "seeds": 2}}, out=tmp_path, jobs=1, quiet=True)
    browser.get((tmp_path / "report.html").as_uri())
    section = browser.find_element("css selector", "details.experiment")
    assert section.get_attribute("id") == "exp-selftest" and section.get_attribute("open") is None
    table = browser.find_element("css selector", "table.checks")
    assert not table.is_displayed()
    links = browser.find_elements("css selector", "nav.toc a")
    assert [a.text for a in links] == ["selftest", "Provenance"]
    links[0].click()
    assert section.get_attribute("open") is not None and table.is_displayed()
    browser.find_element("xpath", "//button[text()='collapse all']").click()
    assert not table.is_displayed()
    browser.find_element("xpath", "//button[text()='expand all']").click()
    assert table.is_displayed()


def test_a_failing_experiment_opens_at_once(tmp_path, browser):
    reproduce(["selftest"], overrides={"selftest": {"sizes": [100, 1000], "seeds": 2, "shift": 1.0}}, out=tmp_path, jobs=1, quiet=True)
    browser.get((tmp_path / "report.html").as_uri())
    assert browser.find_element("css selector", "details.experiment").get_attribute("open") is not None
    assert browser.find_element("css selector", "table.checks").is_displayed()


def test_a_broken_figure_is_detected(tmp_path, browser):
    """The image check above can fail: a report whose PNG is not an image shows an unloaded <img>."""
    reproduce(["selftest"], overrides={"selftest": {"sizes": [100, 1000], "seeds": 2}}, out=tmp_path, jobs=1, quiet=True)
    html = (tmp_path / "report.html").read_text()
    start = html.index("data:image/png;base64,") + len("data:image/png;base64,")
    (tmp_path / "broken.html").write_text(html[:start] + "bm90IGEgcG5n" + html[html.index('"', start):])  # "not a png"
    browser.get((tmp_path / "broken.html").as_uri())
    assert browser.execute_script("return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)") == [False]
