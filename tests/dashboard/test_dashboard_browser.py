"""The dashboards and the MLflow UI in a real browser: Debian's Chromium driven by Playwright.

Served on 127.0.0.1 as a user would open them: the experiment folders over HTTP, MLflow's
own server on the searches' SQLite store. Screenshots go to ``dashboards/screenshots/``
(the README shows them). Skipped only where Chromium is not installed (``.ci/run``
installs it).
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import threading
from pathlib import Path

import pytest
from helpers import free_port, start_server, stop_server

from hpsearch.dashboard import write_comparison
from hpsearch.dashboard.collect import collect_search

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Debian's chromium is not installed (apt-get install chromium)")
# As root, in a closed network: no sandbox, and none of Chromium's own connections.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "dashboards" / "screenshots"
TIMEOUT_MS = 60_000  # a loaded 2-core machine


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def served(searches):
    """The folder holding both experiment folders, over HTTP on 127.0.0.1."""
    root = searches["tpe"].parent
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def mlflow_ui(searches, tmp_path_factory):
    """``mlflow server`` on the searches' store."""
    search = collect_search(searches["tpe"])
    port = free_port()
    server = start_server(tmp_path_factory.mktemp("mlflow-ui"), port, backend_uri=search.tracking_uri)
    yield f"http://127.0.0.1:{port}"
    stop_server(server)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # not one line per request in the test output
        pass


def _page(browser, errors: list[str]):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return page


def test_dashboard_renders_its_plots_and_sorts_its_table(browser, served, searches):
    root, base = served
    search = collect_search(searches["tpe"])
    errors: list[str] = []
    page = _page(browser, errors)
    page.goto(f"{base}/{searches['tpe'].relative_to(root)}/dashboard/dashboard.html")
    page.locator("#trials-table tbody tr").first.wait_for()
    plots = page.locator(".js-plotly-plot")
    assert plots.count() == 4
    for i in range(4):  # each figure was drawn by plotly.js: an SVG with its traces
        assert plots.nth(i).locator(".main-svg").count() >= 1
    drawn = page.locator("#fig-curves .scatterlayer .trace").count()
    assert drawn == sum(1 for t in search.trials if t.epochs)
    assert page.locator("#fig-parallel .parcoords").count() == 1

    rows = page.locator("#trials-table tbody tr")
    assert rows.count() == len(search.trials)
    # With horizontal scrolling DataTables shows a copy of the header above the table.
    header = page.locator(".dt-scroll-head th", has_text=re.compile(r"^\s*trial\s*$"))
    header.click()  # sort by trial id, then the other way round

    def trial_column() -> list[str]:  # read in one go: DataTables replaces the rows when it sorts
        return page.eval_on_selector_all("#trials-table tbody tr td:first-child",
                                         "cells => cells.map(cell => cell.innerText.trim())")

    ascending = sorted(t.trial_id for t in search.trials)
    assert trial_column() == ascending
    page.wait_for_timeout(600)  # a second click at once would be a double click
    header.click()
    page.wait_for_function("id => document.querySelector('#trials-table tbody tr td').innerText.trim() == id",
                           arg=ascending[-1])
    assert trial_column() == ascending[::-1]
    page.wait_for_timeout(300)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "dashboard.png", full_page=True)
    assert errors == []


def test_comparison_renders(browser, served, searches):
    root, base = served
    write_comparison([searches["tpe"], searches["random"]], out=root / "compare.html", echo=lambda line: None)
    errors: list[str] = []
    page = _page(browser, errors)
    page.goto(f"{base}/compare.html")
    page.locator("#searches-table tbody tr").first.wait_for()
    assert page.locator("#fig-compare .scatterlayer .trace").count() == 2 * 2  # 2 searches x 2 panels
    assert page.locator("#searches-table tbody tr").count() == 2
    page.locator("#searches-table a", has_text="dashboard").first.click()  # relative link to a search's page
    page.locator("#fig-curves .main-svg").first.wait_for()
    page.go_back()
    page.locator("#fig-compare .main-svg").first.wait_for()
    page.screenshot(path=SCREENSHOTS / "compare.png", full_page=True)
    assert errors == []


def test_mlflow_ui_lists_the_runs_and_shows_the_dashboard(browser, mlflow_ui, searches):
    search = collect_search(searches["tpe"])
    page = _page(browser, [])
    page.goto(f"{mlflow_ui}/#/experiments/{search.experiment_id}/runs")
    parent = page.locator(".ag-row", has_text=search.name)
    parent.wait_for()
    close = page.get_by_role("button", name="Close")  # MLflow 3's assistant panel, if open
    if close.count():
        close.last.click()
    parent.locator('[col-id="attributes.`Run Name`"] button').first.click()  # expand the child runs
    for trial in search.trials:
        page.locator(".ag-row", has_text=trial.run_name).first.wait_for()
    page.screenshot(path=SCREENSHOTS / "mlflow-runs.png")

    # The dashboard as an artifact of the parent run, in MLflow's sandboxed viewer.
    page.goto(f"{mlflow_ui}/#/experiments/{search.experiment_id}/runs/{search.parent_run_id}"
              "/artifacts/dashboard/dashboard.html")
    frame = page.frame_locator("iframe.mlflow-html-iframe")
    frame.locator("#trials-table tbody tr").first.wait_for()
    assert frame.locator(".js-plotly-plot").count() == 4
    assert frame.locator("#mlflow-viewer-note").is_visible()
    link = frame.locator("#trials-table a[data-mlflow-path]").first
    link.hover()  # pointed at the server the page came from, not the default UI address
    assert link.get_attribute("href").startswith(f"{mlflow_ui}/#/experiments/{search.experiment_id}/runs/")
    page.screenshot(path=SCREENSHOTS / "mlflow-artifact-dashboard.png")
