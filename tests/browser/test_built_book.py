"""The built book as a reader opens it: from disk, in headless Chromium, with the network off.

Run after the book is built (``make test`` runs it last; ``make browser`` alone). Needs Debian's
``chromium`` and ``chromium-driver`` (``apt-get install chromium chromium-driver``; ``.ci/run``
installs them when missing). Every page must load with no console error and no request leaving
the machine, show its equations typeset by MathJax with no raw TeX left, and the scoreboard must
list every chapter; one static explorable's slider must change its figure. Screenshots of one
chapter land in ``_build/screenshots/`` for a person to look at.
"""

from __future__ import annotations

import json
import shutil

import pytest

from lib.book import build
from lib.book.papers import REPO_ROOT, load_papers

HTML_DIR = REPO_ROOT / "_build" / "html"
SHOTS_DIR = REPO_ROOT / "_build" / "screenshots"
SHOWN_CHAPTER = "book/optimization-learning-theory/sinkhorn-newton-sparse"
# Finds raw TeX left in the page's prose (code blocks may legitimately hold backslashes).
RAW_TEX_JS = """
const body = document.querySelector('main') || document.body;
const copy = body.cloneNode(true);
copy.querySelectorAll('pre, code, script, style, mjx-container, .highlight, .cell_input')
    .forEach(e => e.remove());
const text = copy.innerText;
const hits = [];
for (const pat of [/\\\\\\(/, /\\\\\\[/, /\\\\begin\\{/, /\\$\\$/]) {
  const m = text.match(pat);
  if (m) hits.push(text.slice(Math.max(0, m.index - 40), m.index + 60));
}
return hits;
"""


def _pages() -> list[str]:
    """Every page of the book, as its docname."""
    docs = ["book/intro", "book/scoreboard", "book/bibliography"]
    return docs + sorted(build._chapter_docnames())


@pytest.fixture(scope="module")
def browser():
    if not (HTML_DIR / "index.html").exists():
        pytest.fail(f"no built book in {HTML_DIR}: run `make book` (or `make test`) first")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail("the browser test needs Debian's chromium and chromium-driver: "
                    "apt-get install chromium chromium-driver")  # fmt: skip
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900",
                # no network: every host name fails to resolve and any proxy use fails
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost",
                "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    yield driver
    driver.quit()


def _open(driver, docname: str) -> None:
    path = HTML_DIR / f"{docname}.html"
    assert path.exists(), f"{path} was not built"
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get_log("performance")
    driver.get(path.as_uri())
    # MathJax typesets asynchronously: wait for it (a page without math has nothing to wait for)
    driver.set_script_timeout(60)
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "if (window.MathJax && MathJax.startup && MathJax.startup.promise)"
        "  MathJax.startup.promise.then(() => done(true), () => done(false));"
        "else done(null);"
    )


def _requests(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


@pytest.mark.parametrize("docname", _pages())
def test_page_loads_offline_without_errors_and_typesets_its_math(browser, docname):
    _open(browser, docname)
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, f"console errors on {docname}: {errors}"
    remote = [u for u in _requests(browser) if u.split(":", 1)[0] in ("http", "https")]
    assert not remote, f"{docname} requests assets from the network: {remote}"
    n_math = browser.execute_script("return document.querySelectorAll('.math').length")
    n_typeset = browser.execute_script(
        "return document.querySelectorAll('mjx-container').length"
    )
    assert n_typeset >= n_math, f"{docname}: {n_math} math elements, {n_typeset} typeset"
    raw = browser.execute_script(RAW_TEX_JS)
    assert not raw, f"raw TeX left on {docname}: {raw}"


def test_a_chapter_has_typeset_equations_and_its_screenshots_are_saved(browser):
    _open(browser, SHOWN_CHAPTER)
    n_typeset = browser.execute_script("return document.querySelectorAll('mjx-container').length")
    assert n_typeset >= 20, f"only {n_typeset} typeset equations on {SHOWN_CHAPTER}"
    SHOTS_DIR.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS_DIR / "chapter-top.png"))
    block = browser.find_element("css selector", "mjx-container[display='true']")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", block)
    browser.save_screenshot(str(SHOTS_DIR / "chapter-equation.png"))


def test_a_static_explorable_slider_changes_the_figure(browser):
    from selenium.webdriver.common.keys import Keys

    _open(browser, SHOWN_CHAPTER)
    root = browser.find_element("css selector", ".book-explorable")
    slider = root.find_element("css selector", "input[type=range]")
    image = root.find_element("css selector", "img")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", root)
    before, label = image.get_attribute("src"), slider.get_attribute("value")
    slider.click()
    slider.send_keys(Keys.END if int(label) == 0 else Keys.HOME)  # as a reader's keyboard does
    assert slider.get_attribute("value") != label
    assert image.get_attribute("src") != before, "moving the slider did not change the figure"
    browser.save_screenshot(str(SHOTS_DIR / "chapter-explorable.png"))


def test_the_scoreboard_lists_every_chapter(browser):
    _open(browser, "book/scoreboard")
    links = browser.execute_script(
        "return Array.from(document.querySelectorAll('main a')).map(a => a.href)"
    )
    present = build._chapter_docnames()
    chapters = [p for p in load_papers() if p.docname in present]
    assert chapters, "no chapters found"
    missing = [p.slug for p in chapters if not any(f"/{p.docname}.html" in u for u in links)]
    assert not missing, f"the scoreboard does not link to: {missing}"
