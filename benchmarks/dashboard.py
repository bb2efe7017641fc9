"""Dashboard speed in a real browser: seconds to each page's first chart, first visit and second (cached) visit.

``python benchmarks/dashboard.py [PROJECT]`` (default: the first shipped results under data/results/) serves the
dashboard (`capml dashboard`), opens every page twice in headless chromium and prints one line per page. The
target: every page's first chart within 2 s on the study results on this machine. The first visit of a page
reads the store (cached per store state afterwards); the second re-reads nothing. The page's chart is "first"
when its first Plotly figure is drawn (SVG present); the SQL page has none. Load on the machine counts: run it
on an idle one. Runs in about a minute.
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
    served_dashboard,
    visit_page,
)


def main() -> None:
    from playwright.sync_api import sync_playwright

    project = Path(sys.argv[1]) if len(sys.argv) > 1 else shipped_result_dirs()[0]
    print(f"dashboard of {project.name}: seconds to the first chart (first visit / second visit)")
    slowest = 0.0
    with served_dashboard(project) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        visit_page(page, url, "sql")  # the server's own start-up (imports, first session) not counted below
        for name in PAGES:
            if name == "sql":
                continue
            first = visit_page(page, url, name).first_chart_s
            second = visit_page(page, url, name).first_chart_s
            if first is None or second is None:  # nothing of that stage in this project: text only
                print(f"{name:24s} no chart")
                continue
            print(f"{name:24s} {first:6.2f} s / {second:6.2f} s")
            slowest = max(slowest, first)
        browser.close()
    print(f"headline: {slowest:.2f}s slowest first chart over the pages (first visit, {project.name})")


if __name__ == "__main__":
    main()
