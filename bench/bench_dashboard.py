"""KPI dashboard speed on the demo clinic at --scale (20x = ~800k appointments, 160 physios).

Targets: first full render <= 5 s; a filter change <= 1 s.
    python bench/bench_dashboard.py [--scale 20] [--repeat 3] [--no-browser] [--db-url URL]
    python bench/bench_dashboard.py --scale 1 --repeat 1 --screenshot docs/dashboard.png   # README image

Two kinds of measurement:
- in-process: ``dashboard.compute`` (every KPI query + the six plotly figures, serialized to JSON
  as they are sent to the page) for the day before the demo's today, as of today: cold (first call
  in this process: plotly import and the outstanding snapshot over the whole history), then a
  physio filter change, a range change (the month so far) and a day change, each warm;
- in Chromium (headless, Debian's /usr/bin/chromium): ``clinic dashboard`` (Voila) on the same
  database; first render = from navigation until the cards and all six charts are drawn, with
  Voila's preheated kernel (the default; ``CLINIC_DASHBOARD_PREHEAT=0``: a new kernel per page,
  kernel start included); then a physio filter change and a range change, as a user does them.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import BENCH_TODAY, loaded_sqlite, table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _serialize(view):
    import plotly.io as pio
    for fig in view.figures.values():
        if not isinstance(fig, str):
            pio.to_json(fig)


def in_process(url: str, repeat: int) -> list[tuple]:
    t0 = time.perf_counter()
    from clinic_lib import dashboard, db  # noqa: F401  (the import is part of a kernel's first render)
    engine = db.make_engine(url)
    day, as_of = BENCH_TODAY - dt.timedelta(days=1), BENCH_TODAY
    with engine.connect() as conn:
        physio = conn.exec_driver_sql("SELECT MIN(physio_id) FROM appointments WHERE local_date = ?"
                                      if url.startswith("sqlite") else
                                      "SELECT MIN(physio_id) FROM appointments WHERE local_date = %s",
                                      (day.isoformat(),)).scalar()
    t1 = time.perf_counter()
    view = dashboard.compute(engine, day, day, None, as_of)
    _serialize(view)
    cold = time.perf_counter() - t1
    cold_total = time.perf_counter() - t0
    cache = view.outstanding_by_physio

    def timed(fn):
        out = []
        for _ in range(repeat):
            t = time.perf_counter()
            _serialize(fn())
            out.append(time.perf_counter() - t)
        return statistics.median(out)

    first_warm = timed(lambda: dashboard.compute(engine, day, day, None, as_of))
    frames = view.frames
    filt = timed(lambda: dashboard.compute(engine, day, day, physio, as_of, cache, frames))
    month = timed(lambda: dashboard.compute(engine, day.replace(day=1), day, None, as_of, cache))
    other_day = timed(lambda: dashboard.compute(engine, day - dt.timedelta(days=7), day - dt.timedelta(days=7),
                                                None, as_of, cache))
    engine.dispose()
    return [
        ("in-process: first render, cold (imports + all queries + 6 figures)", cold_total, 5.0),
        ("in-process: first render, queries + figures only (cold)", cold, 5.0),
        ("in-process: first render, warm (new kernel would not be warm)", first_warm, 5.0),
        ("in-process: physio filter change", filt, 1.0),
        ("in-process: range change (month to date)", month, 1.0),
        ("in-process: day change", other_day, 1.0),
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_browser(url: str, repeat: int, settle: float = 30.0, screenshot: Path | None = None) -> list[tuple]:
    from playwright.sync_api import sync_playwright

    from clinic_lib.dashboard import page as dashboard
    port = _free_port()
    env = dashboard.voila_env(dict(os.environ, DATABASE_URL=url))
    log = open(Path("/tmp") / f"bench-dashboard-{port}.log", "w")
    proc = subprocess.Popen(dashboard.voila_command(port), env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    rows = []
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"voila did not start, see {log.name}")
                time.sleep(0.3)
        day = BENCH_TODAY - dt.timedelta(days=1)
        # No as_of in the URL: as of today, like the owner's morning visit, so the preheated
        # kernel's outstanding snapshot (as of today) is used.
        page_url = f"http://127.0.0.1:{port}/?day={day}"
        plots_drawn = ("Array.from(document.querySelectorAll('.js-plotly-plot'))"
                       ".filter(e => e.offsetHeight > 0).length >= 6")

        def first_render(browser):
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            t = time.perf_counter()
            page.goto(page_url, wait_until="commit", timeout=180_000)
            page.wait_for_selector('.dash-status[data-state="ready"][data-render="1"]', timeout=180_000)
            page.wait_for_function(plots_drawn, timeout=60_000)
            return page, time.perf_counter() - t

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page, cold = first_render(browser)  # right after the server started: the kernel warms up first
            page.close()
            firsts, filters, ranges = [], [], []
            for _ in range(repeat):
                time.sleep(settle)  # the pool's next kernel is started and preheated meanwhile
                page, seconds = first_render(browser)
                firsts.append(seconds)
                if screenshot and len(firsts) == 1:
                    page.wait_for_timeout(1000)
                    screenshot.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(screenshot), full_page=True)
                options = page.eval_on_selector_all(".physio-filter select option", "els => els.map(e => e.textContent)")
                t = time.perf_counter()
                page.select_option(".physio-filter select", label=options[1])
                page.wait_for_selector('.dash-status[data-state="ready"][data-render="2"]', timeout=60_000)
                page.wait_for_function(plots_drawn, timeout=60_000)
                filters.append(time.perf_counter() - t)
                page.click(".mode-filter button:has-text('Date range')")
                page.wait_for_selector('.dash-status[data-state="ready"][data-render="3"]', timeout=60_000)
                t = time.perf_counter()
                page.fill(".start-filter input", day.replace(day=1).isoformat())
                page.wait_for_selector('.dash-status[data-state="ready"][data-render="4"]', timeout=60_000)
                page.wait_for_function(plots_drawn, timeout=60_000)
                ranges.append(time.perf_counter() - t)
                assert "There was an error" not in page.content()
                page.close()
            browser.close()
        mode = "preheated kernel" if "--VoilaConfiguration.preheat_kernel=True" in dashboard.voila_command(port) \
            else "a new kernel per page"
        rows = [("Voila in Chromium: first request right after server start", cold, None),
                (f"Voila in Chromium: first full render, {mode} (cards + 6 charts drawn)",
                 statistics.median(firsts), 5.0),
                ("Voila in Chromium: physio filter change", statistics.median(filters), 1.0),
                ("Voila in Chromium: range change (month to date)", statistics.median(ranges), 1.0)]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        log.close()
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--db-url", default=None, help="default: the demo at --scale in a SQLite file")
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--screenshot", type=Path, default=None,
                    help="save the first preheated render as PNG (docs/dashboard.png: --scale 1)")
    ap.add_argument("--settle", type=float, default=30.0,
                    help="seconds between page visits, for Voila to preheat the next kernel")
    a = ap.parse_args(argv)
    os.environ.setdefault("CLINIC_TZ", "Europe/Berlin")
    url = a.db_url or loaded_sqlite(a.scale, name="dashboard")[0]
    from clinic_lib.core import db
    engine = db.make_engine(url)
    with engine.connect() as conn:
        n = conn.exec_driver_sql("SELECT COUNT(*) FROM appointments").scalar()
    engine.dispose()
    rows = in_process(url, a.repeat)
    if not a.no_browser:
        if Path(CHROMIUM).exists():
            rows += in_browser(url, a.repeat, a.settle, a.screenshot)
        else:
            print(f"(no browser measurement: {CHROMIUM} is missing)")
    print(f"\nKPI dashboard, {n:,} appointments ({'scale ' + str(a.scale) + 'x demo' if not a.db_url else url}), "
          f"day {BENCH_TODAY - dt.timedelta(days=1)} as of {BENCH_TODAY}, median of {a.repeat}; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}\n")
    print(table(["measure", "seconds", "target", "ok"],
                [(m, f"{s:.2f}", f"<= {t:g}" if t else "–", ("yes" if s <= t else "NO") if t else "–")
                 for m, s, t in rows]))


if __name__ == "__main__":
    main()
