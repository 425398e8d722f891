"""The KPI dashboard as a user sees it: Voila (``clinic dashboard``) in headless Chromium.

Starts the real server on a free port over the hand-made clinic of tests/kpi_fixture.py (once with
DATABASE_URL on a SQLite file, once on a fresh Postgres database: conftest's db_url), opens
``/?day=2026-03-29&as_of=2026-04-30``, waits for the widgets and the six charts, compares every
card with what clinic_lib.dashboard.kpis computes, changes the physio filter and the range and compares
again, checks the page never shows Voila's "There was an error", records every request (all must
go to 127.0.0.1) and saves a screenshot in the outputs folder. A second server on a missing
database must show a friendly message.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import kpi_fixture as fx
from clinic_lib.dashboard import page as dashboard
from clinic_lib.core import db
from clinic_lib.dashboard import kpis
from clinic_lib.core.config import get_settings
from clinic_lib.core.migrate import migrate

# one worker runs this module: its server and browser are built once for all its tests
pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("test_dashboard_browser")]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
DAY, AS_OF = "2026-03-29", fx.AS_OF
ERROR_TEXT = "There was an error"

if not Path(CHROMIUM).exists():
    pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium; CI installs it)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m clinic_lib dashboard`` in its own process group, stopped by its id."""

    def __init__(self, tmp: Path, database_url: str, **extra_env: str):
        self.port = _free_port()
        self.log_path = tmp / f"voila-{self.port}.log"
        env = dict(os.environ, DATABASE_URL=database_url, CLINIC_TZ="Europe/Berlin",
                   CLINIC_DATA_DIR=str(tmp / "data"), CLINIC_OUTPUTS_DIR=str(tmp / "outputs"),
                   LATE_CANCEL_HOURS="24", **extra_env)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "clinic_lib", "dashboard", "--port", str(self.port)],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the dashboard exited: {self.log_path.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise AssertionError(f"the dashboard did not listen within 90 s: {self.log_path.read_text()[-2000:]}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


@pytest.fixture
def clinic_db(tmp_path, db_url):
    """The fixture clinic on a SQLite file and on a fresh Postgres database (conftest's db_url)."""
    engine = db.make_engine(db_url)
    migrate(engine)
    fx.load(engine)
    from clinic_lib.ingest.refresh import log_etl_run
    log_etl_run(engine, "refresh", DAY, "2026-03-29T20:00:00+00:00", "ok", 10, 10)
    yield tmp_path, db_url, engine
    engine.dispose()  # before conftest drops the Postgres database


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 2000})
    requests: list[str] = []
    page.page_errors = []  # uncaught exceptions and unhandled rejections of the page's scripts
    page.on("pageerror", lambda exc: page.page_errors.append(str(exc)))
    page.on("request", lambda r: requests.append(r.url))
    page.on("websocket", lambda ws: requests.append(ws.url))
    page.goto(url, wait_until="commit", timeout=120_000)
    return page, requests


def _wait_ready(page, render: int, timeout_ms: int = 120_000):
    page.wait_for_selector(f'.dash-status[data-state="ready"][data-render="{render}"]', timeout=timeout_ms)
    try:
        page.wait_for_function(
            "Array.from(document.querySelectorAll('.js-plotly-plot')).filter(e => e.offsetHeight > 0).length >= 6",
            timeout=60_000)
    except sync_api.TimeoutError:
        charts = page.eval_on_selector_all(
            "[class*=chart-]", "els => els.map(e => e.className.match(/chart-\\w+/)[0] + ': ' + "
            "e.querySelectorAll('.js-plotly-plot').length + ' plot(s), ' + e.innerText.slice(0, 120))")
        raise AssertionError(f"render {render}: the six charts were not drawn within 60 s: {charts}; "
                             f"page errors {getattr(page, 'page_errors', None)}") from None
    assert ERROR_TEXT not in page.content()


def _cards(page) -> dict[str, str]:
    return {el.get_attribute("data-kpi"): el.query_selector(".kpi-value").inner_text().strip()
            for el in page.query_selector_all(".kpi-card")}


def _expected(engine, start, end=None, physio=None) -> dict[str, str]:
    s = kpis.summary(engine, start, end, physio, AS_OF)
    return {key: dashboard.card_value(key, s) for key, *_ in dashboard.CARDS}


def test_dashboard_in_chromium(clinic_db, browser, monkeypatch):
    """Runs twice (db_url): Voila with DATABASE_URL on the SQLite file, then on the Postgres database."""
    outputs = get_settings().outputs_dir  # the project's configured outputs folder
    tmp, url, engine = clinic_db
    backend = "sqlite" if url.startswith("sqlite") else "postgres"
    monkeypatch.setenv("CLINIC_TZ", "Europe/Berlin")
    monkeypatch.setenv("LATE_CANCEL_HOURS", "24")
    server = Server(tmp, url)
    try:
        page, requests = _open(browser, f"{server.url}?day={DAY}&as_of={AS_OF}")
        _wait_ready(page, 1)
        # The URL preselected the day; every card shows what clinic_lib computes.
        assert page.input_value(".start-filter input") == DAY
        all_physios = _expected(engine, DAY)
        assert _cards(page) == all_physios
        assert all_physios["bookings"] == "6" and all_physios["booked_utilization"] == "50.0 %"
        assert "Data refresh" in page.inner_text("[data-panel=freshness]")

        # Physio filter: Anna Alt (physio 1) had 4 of the 6 appointments that day.
        page.select_option(".physio-filter select", label="Anna Alt")
        _wait_ready(page, 2)
        anna = _expected(engine, DAY, physio=1)
        assert anna["bookings"] == "4" and anna != all_physios
        assert _cards(page) == anna

        # A date range 03-29 .. 03-30 for Anna.
        page.click(".mode-filter button:has-text('Date range')")
        _wait_ready(page, 3)
        page.fill(".end-filter input", "2026-03-30")
        _wait_ready(page, 4)
        assert _cards(page) == _expected(engine, DAY, "2026-03-30", physio=1)

        # The template refuses the plotly renderer's hidden PNG copies of the charts (index.html.j2),
        # silently, and a chart's own "Download plot as a png" still gives the PNG.
        page.hover(".chart-outstanding .js-plotly-plot")
        with page.expect_download(timeout=30_000) as download:
            page.click('.chart-outstanding .modebar-btn[data-title="Download plot as a PNG"]')
        png = Path(download.value.path()).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
        assert page.page_errors == []
        # No chart offers to upload its data ("Share chart..." sends it to plotly's Chart Studio).
        titles = page.eval_on_selector_all(".chart-outstanding .modebar-btn", "els => els.map(e => e.dataset.title)")
        assert "Download plot as a PNG" in titles and not [t for t in titles if "Share" in t or "Studio" in t], titles

        page.wait_for_timeout(500)
        outputs.mkdir(parents=True, exist_ok=True)
        shot = outputs / ("dashboard_screenshot.png" if backend == "sqlite" else f"dashboard_screenshot_{backend}.png")
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        assert ERROR_TEXT not in page.content()
        page.close()
        # Nothing left the machine: the page, its scripts, plotly.js and the kernel socket are local.
        assert requests
        hosts = {u.split("/")[2].rsplit(":", 1)[0] for u in requests if "://" in u and not u.startswith("data:")}
        assert hosts <= LOCAL_HOSTS, sorted(u for u in requests if u.split("/")[2].rsplit(":", 1)[0] not in LOCAL_HOSTS)

        # The next visitor gets a new kernel and the same page, well within Voila's 120 s cell
        # timeout (see test_every_visitor_is_served_without_a_stall).
        page, _ = _open(browser, f"{server.url}?day={DAY}&as_of={AS_OF}")
        _wait_ready(page, 1, timeout_ms=60_000)
        assert _cards(page) == all_physios
        page.close()
    finally:
        server.stop()


def test_missing_database_shows_a_friendly_message(tmp_path, browser):
    server = Server(tmp_path, f"sqlite:///{tmp_path / 'nowhere' / 'clinic.db'}")
    try:
        page, requests = _open(browser, server.url)
        page.wait_for_selector(".dash-message", timeout=120_000)
        text = page.inner_text("body")
        assert "No database yet" in text and ERROR_TEXT not in text
        assert not (tmp_path / "nowhere" / "clinic.db").exists()  # looking did not create it
        page.close()
    finally:
        server.stop()


def _get(url: str, timeout: float) -> tuple[float, str]:
    import urllib.request
    t0 = time.monotonic()
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body = response.read().decode()
    return time.monotonic() - t0, body


@pytest.mark.parametrize("preheat", ["1", "0"], ids=["preheated", "kernel-per-page"])
def test_every_visitor_is_served_without_a_stall(tmp_path, monkeypatch, preheat):
    """Three page loads in a row on a demo clinic (1x, one year), each well within Voila's 120 s
    cell timeout, with Voila's preheated kernels (the default) and without. Under plain
    ``python -m voila`` the second load waited the whole 120 s for a cell reply that was already
    in the socket (a missed wake-up; clinic_lib/dashboard/server.py)."""
    import datetime as dt

    from clinic_lib.ingest.demo import generate_demo
    from clinic_lib.ingest.refresh import load_raw
    monkeypatch.setenv("CLINIC_TZ", "Europe/Berlin")
    today = dt.date(2026, 11, 24)
    generate_demo(tmp_path / "demo", seed=3, today=today, days_history=365, drop_days=0)
    url = f"sqlite:///{tmp_path / 'clinic.db'}"
    engine = db.make_engine(url)
    load_raw(engine, folder=tmp_path / "demo" / "raw")
    engine.dispose()
    server = Server(tmp_path, url, CLINIC_DASHBOARD_PREHEAT=preheat)
    try:
        for visit in range(3):
            seconds, body = _get(f"{server.url}?day={today - dt.timedelta(days=1)}", timeout=60)
            assert "application/vnd.jupyter.widget-view+json" in body, body[-2000:]
            assert ERROR_TEXT not in body and "timed out" not in body
            assert seconds < 60, f"visit {visit + 1} took {seconds:.0f} s"
    finally:
        server.stop()
