"""KPI dashboard speed on the demo clinic at --scale (20x = ~800k appointments, 160 physios).

Targets: first full render <= 5 s and a filter change <= 1 s where the reference loop
``sum(range(10**7))`` takes at most 0.15 s; on a slower machine each target is scaled by the
loop's time measured in the same run (target * loop / 0.15).
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
  kernel start included); then a physio filter change and a range change, as a user does them;
  then the first visit after an idle gap longer than the cell timeout (``--idle-gap``, default the
  cell timeout + 10 s: the preheated kernel waited that long for its visitor), its own row; and
  the memory of the kernels (resident set of each: the preheated one waiting, a visitor's after
  its page was drawn).
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
from common import BENCH_TODAY, Results, loaded_sqlite, table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


REFERENCE_LOOP_SECONDS = 0.15  # what sum(range(10**7)) may take where the targets hold as they are


def reference_loop() -> float:
    """The best of three timings of sum(range(10**7)) on this machine, now."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        sum(range(10**7))
        best = min(best, time.perf_counter() - t)
    return best


def _serialize(view):
    import plotly.io as pio
    for fig in view.figures.values():
        if not isinstance(fig, str):
            pio.to_json(fig)


def in_process(url: str, repeat: int) -> list[tuple]:
    t0 = time.perf_counter()
    from clinic_lib.core import db  # noqa: F401
    from clinic_lib.dashboard import page as dashboard  # noqa: F401  (the import is part of a kernel's first render)
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


def _kernel_memory_mb(pid: int) -> dict[str, float]:
    """Resident memory (MB) of the Voila server ("server") and of each of its kernels, by kernel id
    (from the kernel's connection file, kernel-<id>.json)."""
    import re

    import psutil
    server = psutil.Process(pid)
    out = {"server": server.memory_info().rss / 2**20}
    for child in server.children(recursive=True):
        try:
            found = re.search(r"kernel-([0-9a-f-]+)\.json", " ".join(child.cmdline()))
            if found:
                out[found.group(1)] = child.memory_info().rss / 2**20
        except psutil.Error:
            pass
    return out


def _leave(page):
    """Leave the page as a user does: its beacon ends its kernel (clinic_lib/dashboard/server.py)."""
    page.goto("about:blank")
    page.close()


def in_browser(url: str, repeat: int, settle: float = 30.0, screenshot: Path | None = None,
               idle_gap: float | None = None) -> tuple[list[tuple], list[tuple]]:
    from playwright.sync_api import sync_playwright

    from clinic_lib.core.config import get_settings
    from clinic_lib.dashboard import page as dashboard
    port = _free_port()
    env = dashboard.voila_env(dict(os.environ, DATABASE_URL=url))
    cell_timeout = get_settings().dashboard_cell_timeout
    idle_gap = cell_timeout + 10 if idle_gap is None else idle_gap
    log = open(Path("/tmp") / f"bench-dashboard-{port}.log", "w")
    proc = subprocess.Popen(dashboard.voila_command(port), env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    rows, memory = [], []
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
            _leave(page)
            firsts, filters, ranges = [], [], []
            for i in range(repeat):
                time.sleep(settle)  # the pool's next kernel is started and preheated meanwhile
                before = _kernel_memory_mb(proc.pid)
                page, seconds = first_render(browser)
                firsts.append(seconds)
                if i == 0:
                    after = _kernel_memory_mb(proc.pid)
                    kernel = page.evaluate("JSON.parse(document.getElementById('jupyter-config-data').textContent).kernelId")
                    memory = [("Voila server", after["server"]),
                              ("the preheated kernel, waiting for a visitor", before.get(kernel, float("nan"))),
                              ("the same kernel once its visitor's page is drawn", after.get(kernel, float("nan")))]
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
                _leave(page)
            idle = None
            if idle_gap > 0:
                time.sleep(idle_gap)  # nobody visits for longer than the cell timeout
                page, idle = first_render(browser)
                assert "timed out" not in page.content() and "There was an error" not in page.content()
                _leave(page)
            browser.close()
        mode = "preheated kernel" if "--VoilaConfiguration.preheat_kernel=True" in dashboard.voila_command(port) \
            else "a new kernel per page"
        rows = [("Voila in Chromium: first request right after server start", cold, None),
                (f"Voila in Chromium: first full render, {mode} (cards + 6 charts drawn)",
                 statistics.median(firsts), 5.0),
                ("Voila in Chromium: physio filter change", statistics.median(filters), 1.0),
                ("Voila in Chromium: range change (month to date)", statistics.median(ranges), 1.0)]
        if idle is not None:
            rows.append((f"Voila in Chromium: first visit after {idle_gap:.0f} s idle (cell timeout "
                         f"{cell_timeout:.0f} s), {mode}", idle, 5.0))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        log.close()
    return rows, memory


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
    ap.add_argument("--idle-gap", type=float, default=None,
                    help="seconds without a visit before the last one (default: the cell timeout + 10; 0: skip)")
    a = ap.parse_args(argv)
    os.environ.setdefault("CLINIC_TZ", "Europe/Berlin")
    url = a.db_url or loaded_sqlite(a.scale, name="dashboard")[0]
    from clinic_lib.core import db
    engine = db.make_engine(url)
    with engine.connect() as conn:
        n = conn.exec_driver_sql("SELECT COUNT(*) FROM appointments").scalar()
    engine.dispose()
    loop_before = reference_loop()
    rows = in_process(url, a.repeat)
    memory = []
    if not a.no_browser:
        if Path(CHROMIUM).exists():
            browser_rows, memory = in_browser(url, a.repeat, a.settle, a.screenshot, a.idle_gap)
            rows += browser_rows
        else:
            print(f"(no browser measurement: {CHROMIUM} is missing)")
    loop = min(loop_before, reference_loop())
    factor = max(1.0, loop / REFERENCE_LOOP_SECONDS)
    print(f"\nKPI dashboard, {n:,} appointments ({'scale ' + str(a.scale) + 'x demo' if not a.db_url else url}), "
          f"day {BENCH_TODAY - dt.timedelta(days=1)} as of {BENCH_TODAY}, median of {a.repeat}; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; sum(range(10**7)) {loop:.3f} s, so the "
          f"targets are scaled by {factor:.2f}\n")
    print(table(["measure", "seconds", "target (scaled)", "ok"],
                [(m, f"{s:.2f}", f"<= {t:g} ({t * factor:.2f})" if t else "–",
                  ("yes" if s <= t * factor else "NO") if t else "–") for m, s, t in rows]))
    if memory:
        print("\nMemory (resident set, MB):\n")
        print(table(["process", "MB"], [(m, f"{mb:.0f}") for m, mb in memory]))
    # docs/benchmarks.md: the same rows through Results (make bench writes the document from one run)

    results = Results("dashboard", loop_seconds=loop)
    subject = "KPI dashboard"
    results.note(subject, f"{n:,} appointments ({'the demo at ' + str(a.scale) + 'x' if not a.db_url else 'the given database'}), "
                          f"median of {a.repeat}")
    for measure, seconds, target in rows:
        if target:
            results.absolute(subject, measure, seconds, "s", at_most=target)
        else:
            results.info(subject, measure, seconds, "s")
    for process, mb in memory:
        results.info(subject, f"memory: {process}", mb, "MB", digits=0)
    results.save()


if __name__ == "__main__":
    main()
