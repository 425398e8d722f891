"""GET /priorities speed: waitress in a subprocess (`clinic api`), keep-alive clients on 127.0.0.1.

Targets (issue 5), for a 100-item day on a 20x database: median <= 2 ms, p99 <= 10 ms,
>= 1,000 requests/s with keep-alive.
    python bench/bench_api.py [--scale 20] [--requests 10000] [--clients 8] [--db-url URL]

The database is the demo clinic at ``--scale`` (bench/common.py); the list of the next clinic day
after the demo's today is built and cut to its 100 highest-priority rows (a day of 100 calls), and
the lists of the following 20 days are built in full; 5,000 call outcomes are recorded (some on
the benchmarked list), so the latest-outcome lookup has work to do.
Latency is measured with one client doing sequential keep-alive requests; throughput with
``--clients`` client processes, each one keep-alive connection, ``--requests`` requests in all.
Every response is checked (status 200 and the expected body length); a lost or failed request
counts as an error.
"""
from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import multiprocessing as mp
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import BENCH_TODAY, loaded_sqlite, table  # noqa: E402

from clinic_lib import db  # noqa: E402
from clinic_lib.calendar import next_clinic_day  # noqa: E402
from clinic_lib.priorities import build_priorities, day_param  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token-" + "x" * 20
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def prepare(url: str, items: int = 100) -> tuple[dt.date, int]:
    engine = db.make_engine(url)
    day = next_clinic_day(engine, BENCH_TODAY)
    d = day
    for _ in range(20):
        d = next_clinic_day(engine, d)
        build_priorities(d, engine=engine, write_csv=False)
    build_priorities(day, engine=engine, write_csv=False)
    with db.begin_write(engine) as conn:
        conn.execute(db.priorities.delete().where(db.priorities.c.day == day_param(conn, day),
                                                  db.priorities.c.rank > items))
        ids = [r[0] for r in conn.exec_driver_sql("SELECT appointment_id FROM appointments ORDER BY appointment_id "
                                                  "LIMIT 5000")]
        listed = [r[0] for r in conn.execute(db.priorities.select().with_only_columns(db.priorities.c.appointment_id)
                                             .where(db.priorities.c.day == day_param(conn, day)))]
        conn.execute(db.call_outcomes.delete())
        rng = random.Random(1)
        outcomes = ("reached", "voicemail", "no_answer", "confirmed")
        rows = [{"appointment_id": a, "outcome": rng.choice(outcomes), "note": None,
                 "recorded_at": "2026-11-24T17:00:00+00:00"} for a in ids[:4900] + listed[:50] * 2]
        conn.execute(db.call_outcomes.insert(), rows)
        n = conn.exec_driver_sql("SELECT COUNT(*) FROM appointments").scalar()
    engine.dispose()
    return day, n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(url: str, port: int, threads: int, cache: bool) -> subprocess.Popen:
    env = dict(os.environ, DATABASE_URL=url, CLINIC_API_TOKEN=TOKEN)
    args = [sys.executable, "-m", "clinic_lib", "api", "--host", "127.0.0.1", "--port", str(port),
            "--threads", str(threads)] + ([] if cache else ["--no-cache"])
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the API server did not start")


def client(port: int, path: str, n: int, length: int, queue) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times, errors = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            conn.request("GET", path, headers=HEADERS)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200 or len(body) != length:
                errors += 1
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        times.append(time.perf_counter() - t0)
    conn.close()
    queue.put((times, errors))


def run_clients(port, path, total, clients, length):
    queue = mp.Queue()
    per = total // clients
    procs = [mp.Process(target=client, args=(port, path, per, length, queue)) for _ in range(clients)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    times = [t for r in results for t in r[0]]
    return times, sum(r[1] for r in results), elapsed, per * clients


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=20)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--threads", type=int, default=4, help="waitress threads (clinic api default: 4)")
    parser.add_argument("--db-url", default=None, help="use this (already loaded) database instead of the demo")
    a = parser.parse_args()
    url = a.db_url or loaded_sqlite(a.scale, name="api")[0]
    day, n_appts = prepare(url)
    rows = []
    for cache in (True, False):
        label = "cache on" if cache else "no cache"
        port = free_port()
        server = start_server(url, port, a.threads, cache)
        try:
            path = f"/priorities?day={day.isoformat()}"
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", path, headers=HEADERS)
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200, body[:200]
            count = json.loads(body)["count"]
            assert 0 < count <= 100, count
            length = len(body)
            # warm-up, then sequential latency (one keep-alive client)
            q = mp.Queue()
            client(port, path, 500, length, q)
            q.get()
            client(port, path, 2000, length, q)
            seq_times, seq_errors = q.get()
            times, errors, elapsed, sent = run_clients(port, path, a.requests, a.clients, length)
        finally:
            server.terminate()
            server.wait(timeout=10)
        ms = lambda s: f"{s * 1000:.2f}"  # noqa: E731
        rows.append([label, ms(statistics.median(seq_times)), ms(pct(seq_times, 0.99)),
                     ms(statistics.median(times)), ms(pct(times, 0.99)), f"{sent / elapsed:,.0f}",
                     f"{sent + len(seq_times):,} / {errors + seq_errors}"])
    print(f"database: {url.split('://')[0]} at {a.scale}x ({n_appts:,} appointments); day {day}, {count} items, "
          f"{length:,} bytes per response; waitress threads {a.threads}; {os.cpu_count()} CPUs; "
          f"load average (1 min) at the end: {os.getloadavg()[0]:.1f}\n")
    print(table(["server", "median ms, 1 client (target <= 2)", "p99 ms, 1 client (target <= 10)",
                 f"median ms, {a.clients} clients", f"p99 ms, {a.clients} clients",
                 f"req/s, {a.clients} keep-alive clients (target >= 1,000)", "requests / failed or lost"], rows))


if __name__ == "__main__":
    main()
