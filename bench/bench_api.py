"""GET /priorities speed: waitress in a subprocess (`clinic api`), keep-alive clients on 127.0.0.1,
against the same server without the work; and, on the same servers in the same run, reception's
screen for the same day.

The floor, "the API without work": waitress with the same threads serving a Flask app whose
``GET /priorities`` answers the very bytes of the measured list from memory (no token, no
database, no cache), measured the same way in the same run. Targets for ``clinic api`` as it
ships (cache on), a 100-item day on a 20x database: median (one client) at most 2x the floor's;
throughput with keep-alive clients at least half the floor's; p99 (one client) <= 10 ms
(absolute, scaled by the reference loop: a bound on the longest wait a receptionist sees); no
request failed or lost. Reception's screen: the list page of that day (``GET /?day=D``, signed
in) in at most 3x the median of ``GET /priorities?day=D``, and recording an outcome with the
updated row back (``POST /days/D/appointments/A/calls`` as the page's script sends it) within
the same bound. ``clinic api --no-cache`` is measured the same way, for reference.
    python bench/bench_api.py [--scale 20] [--requests 10000] [--clients 8] [--db-url URL]

The database is the demo clinic at ``--scale`` (bench/common.py); the list of the next clinic day
after the demo's today is built and cut to its 100 highest-priority rows (a day of 100 calls), and
the lists of the following 20 days are built in full; 5,000 call outcomes are recorded (some on
the benchmarked list), so the latest-outcome lookup has work to do.
Latency is measured with one client doing sequential keep-alive requests; throughput with
``--clients`` client processes, each one keep-alive connection, ``--requests`` requests in all.
Every response is checked (status 200 and the expected body length); a lost or failed request
counts as an error. The screen is measured with one sequential keep-alive client, signed in as a
user made for the bench: the page (status 200, the expected length), then outcomes recorded on
the list's appointments in turn (status 201, the row's HTML in the answer).
"""
from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import multiprocessing as mp
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).parent))
from clinic_lib.core import db  # noqa: E402
from clinic_lib.core.clinic_days import next_clinic_day  # noqa: E402
from clinic_lib.reception import users  # noqa: E402
from clinic_lib.reception.priorities import build_priorities, day_param  # noqa: E402

from common import BENCH_TODAY, Results, loaded_sqlite, table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token-" + "x" * 20
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
USER, PASSWORD = "bench", "bench password 0123456789"
SERVER_DATA = Path(os.environ.get("CLINIC_BENCH_CACHE", "/tmp/clinic-bench")) / "api-server-data"
SUBJECT, SCREEN = "Reception API", "Reception's screen"
# The floor: the same server software answering the same bytes with no work behind them.
FLOOR_SERVER = r"""
import sys
from flask import Flask, Response
import waitress
port, threads, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
body = open(path, "rb").read()
app = Flask("floor", static_folder=None)
app.add_url_rule("/priorities", "priorities", lambda: Response(body, mimetype="application/json"))
app.add_url_rule("/health", "health", lambda: {"status": "ok"})
waitress.serve(app, host="127.0.0.1", port=port, threads=threads, ident="floor")
"""


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
        conn.execute(db.users.delete().where(db.users.c.name == USER))
    users.add_user(engine, USER, PASSWORD)
    engine.dispose()
    return day, n, listed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(url: str, port: int, threads: int, cache: bool, floor_body: Path | None = None) -> subprocess.Popen:
    """``clinic api`` (or, with ``floor_body``, the floor serving that file's bytes) on ``port``."""
    SERVER_DATA.mkdir(parents=True, exist_ok=True)  # the session secret is made there
    env = dict(os.environ, DATABASE_URL=url, CLINIC_API_TOKEN=TOKEN, CLINIC_DATA_DIR=str(SERVER_DATA))
    args = [sys.executable, "-m", "clinic_lib", "api", "--host", "127.0.0.1", "--port", str(port),
            "--threads", str(threads)] + ([] if cache else ["--no-cache"])
    if floor_body is not None:
        args = [sys.executable, "-c", FLOOR_SERVER, str(port), str(threads), str(floor_body)]
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


def sign_in(conn: http.client.HTTPConnection) -> str:
    """Sign the bench's user in over ``conn``; the session cookie."""
    conn.request("GET", "/sign-in")
    resp = conn.getresponse()
    page = resp.read().decode()
    cookie = resp.getheader("Set-Cookie").split(";")[0]
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    conn.request("POST", "/sign-in", body=urlencode({"csrf_token": token, "name": USER, "password": PASSWORD}),
                 headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 303, resp.status
    return resp.getheader("Set-Cookie").split(";")[0]


def screen_times(port: int, day: dt.date, listed: list[int], blocks: int = 10, pages: int = 200, posts: int = 50):
    """One keep-alive client, signed in, in ``blocks`` rounds (so that a change of the machine's
    load meets all three alike): ``pages`` times GET /priorities then the list page in turn,
    then ``posts`` outcomes recorded as the page's script records them (the row comes back).
    Returns (API times, page times, post times, page bytes, errors); the first round warms up."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    cookie = sign_in(conn)
    api_path, page_path = f"/priorities?day={day.isoformat()}", f"/?day={day.isoformat()}"

    def get(path, headers):
        t0 = time.perf_counter()
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        return time.perf_counter() - t0, resp.status, body
    _, status, body = get(page_path, {"Cookie": cookie})
    assert status == 200, body[:300]
    token = re.search(rb'name="csrf_token" value="([^"]+)"', body).group(1).decode()
    seen = int(re.search(rb'id="seen" data-seen="([0-9]+)"', body).group(1))
    errors, api_times, page_times, post_times, lengths = 0, [], [], [], set()
    outcomes = ("reached", "voicemail", "no_answer", "confirmed")
    for block in range(blocks + 1):
        for _ in range(pages):
            elapsed, status, body = get(api_path, HEADERS)
            errors += status != 200
            if block:
                api_times.append(elapsed)
            elapsed, status, body = get(page_path, {"Cookie": cookie})
            errors += status != 200
            lengths.add(len(body))
            if block:
                page_times.append(elapsed)
        for i in range(posts):
            aid = listed[(block * posts + i) % len(listed)]
            form = urlencode({"csrf_token": token, "outcome": outcomes[i % 4], "seen": seen})
            t0 = time.perf_counter()
            conn.request("POST", f"/days/{day.isoformat()}/appointments/{aid}/calls", body=form,
                         headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded",
                                  "X-Clinic-Fragment": "1"})
            resp = conn.getresponse()
            body = resp.read()
            elapsed = time.perf_counter() - t0
            ok = resp.status == 201 and f'id="appt-{aid}"'.encode() in body
            errors += not ok
            if ok:
                seen = int(re.search(rb'id="seen" data-seen="([0-9]+)"', body).group(1))
            if block:
                post_times.append(elapsed)
    conn.close()
    return api_times, page_times, post_times, max(lengths), errors


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def measure_api(port: int, path: str, requests: int, clients: int) -> dict:
    """The response of ``path`` (checked), then latency with one sequential keep-alive client
    (500 to warm up, 2,000 timed) and throughput with ``clients`` keep-alive client processes."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path, headers=HEADERS)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 200, body[:200]
    q = mp.Queue()
    client(port, path, 500, len(body), q)
    q.get()
    client(port, path, 2000, len(body), q)
    seq_times, seq_errors = q.get()
    times, errors, elapsed, sent = run_clients(port, path, requests, clients, len(body))
    return {"body": body, "median": statistics.median(seq_times), "p99": pct(seq_times, 0.99),
            "median_n": statistics.median(times), "p99_n": pct(times, 0.99), "rate": sent / elapsed,
            "requests": sent + len(seq_times), "errors": errors + seq_errors}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=20)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--threads", type=int, default=4, help="waitress threads (clinic api default: 4)")
    parser.add_argument("--db-url", default=None, help="use this (already loaded) database instead of the demo")
    a = parser.parse_args()
    results = Results("api")
    url = a.db_url or loaded_sqlite(a.scale, name="api")[0]
    day, n_appts, listed = prepare(url)
    path = f"/priorities?day={day.isoformat()}"
    rows, screen_rows, measured = [], [], {}
    for label in ("cache on", "no cache", "floor"):
        port = free_port()
        floor_body = None
        if label == "floor":
            floor_body = SERVER_DATA / "floor-body.json"
            floor_body.write_bytes(measured["cache on"]["body"])
        server = start_server(url, port, a.threads, label == "cache on", floor_body)
        try:
            m = measured[label] = measure_api(port, path, a.requests, a.clients)
            if label != "floor":
                api_times, page_times, post_times, page_length, screen_errors = screen_times(port, day, listed)
        finally:
            server.terminate()
            server.wait(timeout=10)
        count = json.loads(m["body"])["count"]
        assert 0 < count <= 100, count
        ms = lambda s: f"{s * 1000:.2f}"  # noqa: E731
        rows.append([label, ms(m["median"]), ms(m["p99"]), ms(m["median_n"]), ms(m["p99_n"]), f"{m['rate']:,.0f}",
                     f"{m['requests']:,} / {m['errors']}"])
        if label == "floor":
            continue
        api_median, page_median, post_median = (statistics.median(x) for x in (api_times, page_times, post_times))
        screen_rows.append([label, ms(api_median), ms(page_median), ms(pct(page_times, 0.99)),
                            f"{page_median / api_median:.1f}", ms(post_median), ms(pct(post_times, 0.99)),
                            f"{post_median / api_median:.1f}", f"{page_length:,}",
                            f"{len(api_times) + len(page_times) + len(post_times):,} / {screen_errors}"])
        measured[label].update(api_median=api_median, page_median=page_median, post_median=post_median,
                               page_p99=pct(page_times, 0.99), post_p99=pct(post_times, 0.99), page_length=page_length,
                               screen_requests=len(api_times) + len(page_times) + len(post_times),
                               screen_errors=screen_errors)
    length = len(measured["floor"]["body"])
    record(results, a, url, day, n_appts, count, length, measured)
    print(f"database: {url.split('://')[0]} at {a.scale}x ({n_appts:,} appointments); day {day}, {count} items, "
          f"{length:,} bytes per response; waitress threads {a.threads}; {os.cpu_count()} CPUs; "
          f"load average (1 min) at the end: {os.getloadavg()[0]:.1f}\n")
    print(table(["server", "median ms, 1 client", "p99 ms, 1 client", f"median ms, {a.clients} clients",
                 f"p99 ms, {a.clients} clients", f"req/s, {a.clients} keep-alive clients", "requests / failed or lost"],
                rows))
    print("\nreception's screen, the same servers and day: one keep-alive client signed in, GET /priorities "
          "and the list page in turn, outcomes recorded between\n")
    print(table(["server", "GET /priorities median ms (in turn with the page)", "list page median ms", "list page p99 ms",
                 "list page / GET /priorities (target <= 3)", "record + row median ms", "record + row p99 ms",
                 "record + row / GET /priorities (target <= 3)", "page bytes", "requests / failed"], screen_rows))
    results.save()


def record(results: Results, a, url: str, day, n_appts: int, count: int, length: int, measured: dict) -> None:
    floor, shipped, bare = measured["floor"], measured["cache on"], measured["no cache"]
    results.note(SUBJECT, f"GET /priorities of one day: {url.split('://')[0]} at {a.scale}x ({n_appts:,} appointments), "
                          f"day {day} cut to its {count} highest-priority rows ({length:,} bytes), 5,000 call "
                          f"outcomes recorded; `clinic api` (waitress, {a.threads} threads) in its own process. "
                          "One client: sequential keep-alive requests (500 to warm up, 2,000 timed); "
                          f"throughput: {a.clients} client processes, one keep-alive connection each, "
                          f"{a.requests:,} requests in all. The floor, the API without work: the same waitress and "
                          "Flask answering the same bytes from memory, measured the same way.")
    floor_name = "the API without work"
    results.ratio(SUBJECT, "median, one client (clinic api)", shipped["median"] * 1000, "ms",
                  floor=floor["median"] * 1000, floor_measure=floor_name, at_most=2)
    results.ratio(SUBJECT, f"requests/s, {a.clients} keep-alive clients (clinic api)", shipped["rate"], "req/s",
                  floor=floor["rate"], floor_measure=floor_name, at_least=0.5,
                  detail=f"median {shipped['median_n'] * 1000:.2f} ms, p99 {shipped['p99_n'] * 1000:.2f} ms")
    results.absolute(SUBJECT, "p99, one client (clinic api)", shipped["p99"] * 1000, "ms", at_most=10,
                     detail=f"the floor's: {floor['p99'] * 1000:.2f} ms")
    results.absolute(SUBJECT, "requests failed or lost (clinic api)", shipped["errors"], "", at_most=0,
                     detail=f"of {shipped['requests']:,}")
    results.info(SUBJECT, "median, one client (clinic api --no-cache)", bare["median"] * 1000, "ms",
                 detail=f"{bare['median'] / floor['median']:.2f}x the floor; p99 {bare['p99'] * 1000:.2f} ms")
    results.info(SUBJECT, f"requests/s, {a.clients} keep-alive clients (clinic api --no-cache)", bare["rate"], "req/s",
                 detail=f"{bare['rate'] / floor['rate']:.2f}x the floor; {bare['errors']} of {bare['requests']:,} "
                        "failed or lost")
    results.note(SCREEN, "The same servers, day and database: one keep-alive client signed in as a bench user; in "
                         "11 rounds (the first warms up) 200 times GET /priorities and the list page in turn, then "
                         "50 outcomes recorded as the page's script records them (the row's HTML comes back). The "
                         "floor is GET /priorities in the same rounds.")
    for label, m in (("clinic api", shipped), ("clinic api --no-cache", bare)):
        api = m["api_median"] * 1000
        floor_measure = "GET /priorities (same rounds)"
        page = dict(floor=api, floor_measure=floor_measure, at_most=3,
                    detail=f"p99 {m['page_p99'] * 1000:.2f} ms; {m['page_length']:,} bytes")
        post = dict(floor=api, floor_measure=floor_measure, at_most=3, detail=f"p99 {m['post_p99'] * 1000:.2f} ms")
        if label == "clinic api":
            results.ratio(SCREEN, f"list page, median ({label})", m["page_median"] * 1000, "ms", **page)
            results.ratio(SCREEN, f"record an outcome + its row, median ({label})", m["post_median"] * 1000, "ms",
                          **post)
            results.absolute(SCREEN, f"requests failed ({label})", m["screen_errors"], "", at_most=0,
                             detail=f"of {m['screen_requests']:,}")
        else:
            results.info(SCREEN, f"list page, median ({label})", m["page_median"] * 1000, "ms",
                         detail=f"{m['page_median'] / m['api_median']:.2f}x its GET /priorities; {page['detail']}")
            results.info(SCREEN, f"record an outcome + its row, median ({label})", m["post_median"] * 1000, "ms",
                         detail=f"{m['post_median'] / m['api_median']:.2f}x its GET /priorities; {post['detail']}")


if __name__ == "__main__":
    main()
