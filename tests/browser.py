"""Drive the dashboard in a real browser (Debian's chromium via Playwright): shared by tests and benchmarks.

``served_dashboard`` runs ``capml dashboard`` on a free port and stops it afterwards; ``visit_page`` opens one page
by its URL (a new browser page load), waits for its first chart, and reports what a user sees (time to the first
chart, errors, species colours); ``navigate_in_app`` switches page as a user does, from the sidebar.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO, wait_until_served

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Every page of dashboard/app.py: (url path, what its first screen must show).
PAGES = {
    "overview": "How far to trust it",
    "dataset": "Dataset",
    "band-gap-model": "Band-gap model",
    "interatomic-potential": "Interatomic potential",
    "disorder": "Disorder",
    "phonons": "Phonons",
    "band-gaps": "Band gaps",
    "modes": "Modes",
    "active-learning": "Active learning",
    "sql": "SQL",
}
SPECIES_COLOURS_JS = """() => Object.fromEntries([...document.querySelectorAll('.js-plotly-plot')]
    .flatMap(gd => (gd.data || []).map(t => [t.name, t.marker && typeof t.marker.color === 'string'
        ? t.marker.color : null]))
    .filter(([name, colour]) => colour && /^[A-Z][a-z]?$/.test(name || '')))"""


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium_path() -> str:
    """Debian's chromium (``make test`` installs it)."""
    path = shutil.which("chromium")
    assert path, "Debian's chromium is missing: `make test` installs it (deploy/install-system-deps.sh)"
    return path


@contextmanager
def served_dashboard(project: Path, *, stop_signal: int = signal.SIGTERM) -> Iterator[str]:
    """``capml dashboard --project project`` on a free port; yields its URL and stops it with ``stop_signal``
    (SIGTERM as a service manager, SIGINT as Ctrl-C), waiting for it to exit."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "dashboard", "--project", str(project), "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ},
    )
    try:
        wait_until_served(f"http://127.0.0.1:{port}/_stcore/health", server, 90, lambda: server.stdout.read().decode())
        yield f"http://127.0.0.1:{port}"
    finally:
        server.send_signal(stop_signal)
        server.wait(timeout=20)


@dataclass
class PageVisit:
    """What one page showed: seconds to its first chart (None: it has none), text, errors, species colours."""

    page: str
    first_chart_s: float | None
    n_charts: int
    text: str
    n_exceptions: int
    species_colours: dict[str, str] = field(default_factory=dict)


#: Height (px) of the content of Streamlit's scrolling container, which the window itself does not scroll.
CONTENT_HEIGHT_JS = """() => Math.max(
  ...['[data-testid="stMain"]', 'section.main', '[data-testid="stAppViewContainer"]']
    .map(s => document.querySelector(s)).filter(Boolean).map(e => e.scrollHeight),
  document.body.scrollHeight)"""


def save_whole_page(browser_page, path: Path, *, max_height_px: int = 12000) -> None:
    """A screenshot of the whole page: the viewport stretched to the content's height (Streamlit scrolls inside
    its own container, so a plain full-page screenshot stops at the window), then restored."""
    path.parent.mkdir(parents=True, exist_ok=True)
    viewport = browser_page.viewport_size
    height = min(int(browser_page.evaluate(CONTENT_HEIGHT_JS)), max_height_px)
    if height > viewport["height"]:
        browser_page.set_viewport_size({"width": viewport["width"], "height": height})
        browser_page.wait_for_timeout(500)  # charts re-laid out for the new size
    browser_page.screenshot(path=str(path), full_page=True)
    browser_page.set_viewport_size(viewport)


#: Installed before any of the dashboard's scripts (``dashboard_page``): the page's own clock (ms from the start of
#: its navigation) at the first animation frame in which a Plotly chart is drawn, i.e. when a user first sees one.
#: The test driver's clock would add the time until the browser, busy drawing the page's other charts, answers it.
FIRST_CHART_INIT_JS = """(() => {
  window.__capmlTimesCharts = true;
  const tick = () => {
    if (document.querySelector('.js-plotly-plot .main-svg')) { window.__capmlFirstChartMs = performance.now(); return; }
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
})();"""


def dashboard_page(browser, *, width: int = 1400, height: int = 1800):
    """A Playwright page for the dashboard whose page loads time their first chart on the page's own clock."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.add_init_script(FIRST_CHART_INIT_JS)
    return page


def wait_for_script_run(browser_page, timeout_s: float) -> None:
    """Wait until the page's script run is over (Streamlit's status widget gone)."""
    browser_page.wait_for_function(
        "!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_s * 1000
    )


def visit_page(
    browser_page, url: str, page: str, *, screenshot: Path | None = None, timeout_s: float = 60
) -> PageVisit:
    """Open ``url/page`` in a Playwright page, wait until Streamlit has drawn it, and describe it. Its
    ``first_chart_s`` counts from the start of the navigation to the frame that first shows a chart (page clock of
    ``dashboard_page``; the driver's clock for a page without that script)."""
    start = time.perf_counter()
    browser_page.goto(f"{url}/{page}", wait_until="domcontentloaded")
    first_chart = None
    try:
        browser_page.wait_for_selector(".js-plotly-plot .main-svg", timeout=timeout_s * 1000)
        first_chart = time.perf_counter() - start
        if browser_page.evaluate("window.__capmlTimesCharts === true"):  # a dashboard_page: its own clock
            browser_page.wait_for_function("window.__capmlFirstChartMs !== undefined", timeout=timeout_s * 1000)
            first_chart = browser_page.evaluate("window.__capmlFirstChartMs") / 1000
    except Exception:  # noqa: BLE001 - a page without charts (SQL) or one that failed: the checks below say which
        pass
    wait_for_script_run(browser_page, timeout_s)
    browser_page.wait_for_timeout(500)
    if screenshot is not None:
        save_whole_page(browser_page, screenshot)
    return PageVisit(
        page=page,
        first_chart_s=first_chart,
        n_charts=browser_page.locator(".js-plotly-plot").count(),
        text=browser_page.locator("body").inner_text(),  # dialogs too ('Page not found' is one)
        n_exceptions=browser_page.locator("[data-testid='stException']").count(),
        species_colours=browser_page.evaluate(SPECIES_COLOURS_JS),
    )


#: Click a sidebar link and resolve with the milliseconds to the new page's first drawn chart, or null when the page
#: has been shown for ``quietMs`` with none (the charts already on screen are marked first, so only new ones count).
NAVIGATE_JS = """([path, quietMs, timeoutMs]) => new Promise(resolve => {
  document.querySelectorAll('.js-plotly-plot').forEach(gd => { gd.__capmlSeen = true; });
  const links = [...document.querySelectorAll('[data-testid="stSidebarNav"] a')];
  const link = links.find(a => new URL(a.href).pathname.replace(/\\/$/, '').endsWith('/' + path)) ||
               (path === '' ? links[0] : null);
  if (!link) { resolve({error: 'no sidebar link to /' + path}); return; }
  const start = performance.now();
  let arrived = null;
  link.click();
  const tick = () => {
    const now = performance.now();
    const fresh = [...document.querySelectorAll('.js-plotly-plot')]
      .some(gd => !gd.__capmlSeen && gd.querySelector('.main-svg'));
    if (fresh) { resolve({ms: now - start}); return; }
    const here = location.pathname.replace(/\\/$/, '').endsWith('/' + path) || path === '';
    const running = document.querySelector('[data-testid="stStatusWidget"]');
    if (here && !running && arrived === null) arrived = now;
    if (arrived !== null && now - arrived > quietMs) { resolve({ms: null}); return; }
    if (now - start > timeoutMs) { resolve({error: 'timed out'}); return; }
    requestAnimationFrame(tick);
  };
  tick();
})"""


def show_three_d(browser_page, *, timeout_s: float = 60) -> dict[str, str]:
    """Switch on the page's 3D views (toggles 'show ... in 3D', off at first) and wait until one is drawn; the
    species colours of the page's charts then."""
    toggles = browser_page.get_by_text(re.compile(r"^show .* in 3D$"))
    for i in range(toggles.count()):
        toggles.nth(i).click()
    browser_page.wait_for_function(  # a chart with 3D traces drawn (its scene's canvas present)
        """[...document.querySelectorAll('.js-plotly-plot')].some(gd => (gd.data || []).some(
            t => t.type === 'scatter3d') && gd.querySelector('canvas'))""",
        timeout=timeout_s * 1000,
    )
    wait_for_script_run(browser_page, timeout_s)
    return browser_page.evaluate(SPECIES_COLOURS_JS)


def navigate_in_app(browser_page, page: str, *, quiet_s: float = 3, timeout_s: float = 60) -> float | None:
    """Switch to ``page`` (its url path; "" for the default page) by clicking its sidebar link, without reloading the
    browser page, as a user moves through the dashboard; seconds from the click to its first chart (None: none drawn
    within ``quiet_s`` of the page being shown)."""
    result = browser_page.evaluate(NAVIGATE_JS, [page, quiet_s * 1000, timeout_s * 1000])
    if "error" in result:
        raise RuntimeError(f"navigating to /{page}: {result['error']}")
    wait_for_script_run(browser_page, timeout_s)
    return None if result["ms"] is None else result["ms"] / 1000
