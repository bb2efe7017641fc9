"""Dashboard speed in a real browser: seconds to each page's first chart, as a user moves through it and by URL.

``python benchmarks/dashboard.py [PROJECT]`` (default: the shipped study, data/results/ag3sbri-study) serves the
dashboard (`capml dashboard`) and, in headless chromium, side by side in one run:
- opens it (the overview, by its URL: a browser page load, Streamlit's and Plotly's scripts evaluated afresh);
- moves through every page from the sidebar as a user does (no page load): first visit (the page's queries run
  and are cached per store state) and second visit (nothing re-read);
- opens every page by its own URL (a bookmarked link: a page load each).
The target: every page's first chart within 2 s on the study results on this machine. A page's chart is "first"
when its first Plotly figure is drawn (SVG present), timed on the browser page's own clock: from the click, or from
the start of the page load, to the animation frame that first shows it (``tests.browser.FIRST_CHART_INIT_JS``; the
test driver's clock would add the time the browser, still drawing the page's other charts, takes to answer it: up to
2 s on a busy machine). The SQL page has none. Load on the machine counts: run it
on an idle one. Runs in about two minutes.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from capml_core.stages.shipping import shipped_result_dirs  # noqa: E402 - the repository root on the path first
from tests.browser import (  # noqa: E402 - the repository root first, so that `tests` is importable
    CHROMIUM_ARGS,
    PAGES,
    chromium_path,
    dashboard_page,
    navigate_in_app,
    served_dashboard,
    visit_page,
)


def seconds(value: float | None) -> str:
    """A time for the table, or 'no chart'."""
    return "no chart" if value is None else f"{value:.2f} s"


def main() -> None:
    from playwright.sync_api import sync_playwright

    shipped = {p.name: p for p in shipped_result_dirs()}
    default = shipped.get("ag3sbri-study") or next(iter(shipped.values()))  # the target is set on the study
    project = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    pages = [name for name in PAGES if name != "sql"]
    sidebar_path = {"overview": ""}  # the overview is the default page: the sidebar links it at the root
    with served_dashboard(project) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = dashboard_page(browser)
        visit_page(page, url, "sql")  # the server's own start-up (imports, first session) not counted below
        opened = visit_page(page, url, "").first_chart_s
        visits: dict[str, list[float | None]] = {name: [] for name in pages}
        for _ in range(2):  # first visits, then second visits
            for name in pages:
                navigate_in_app(page, "sql")  # from a page without charts, so that each visit draws afresh
                visits[name].append(navigate_in_app(page, sidebar_path.get(name, name)))
        by_url = {name: visit_page(page, url, name).first_chart_s for name in pages}
        browser.close()
    print(f"dashboard of {project.name}: seconds to the first chart")
    print(f"opening the dashboard (overview by URL): {seconds(opened)}")
    print(f"{'page':24s} {'sidebar, 1st':>12s} {'sidebar, 2nd':>12s} {'by URL':>10s}")
    for name in pages:
        first, second = visits[name]
        print(f"{name:24s} {seconds(first):>12s} {seconds(second):>12s} {seconds(by_url[name]):>10s}")
    drawn = [v for name in pages for v in (*visits[name], by_url[name]) if v is not None]
    loads = [v for v in [opened, *by_url.values()] if v is not None]
    print(f"slowest by URL (a page load each): {max(loads):.2f} s")
    where = f"sidebar or URL, the browser's very first page load aside, {project.name}"
    print(f"headline: {max(drawn):.2f}s slowest first chart over the pages ({where})")


if __name__ == "__main__":
    main()
