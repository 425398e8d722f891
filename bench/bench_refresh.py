"""Initial load and daily refresh speed on SQLite, at 1x and 20x.

Targets: refresh_day at 1x <= 0.2 s in-process (absolute, scaled by the reference loop); at 20x
history <= 1.3x its 1x time in the same run; the initial load of a 20x database <= 3x the time
SQLite alone takes to copy the same rows (the floor below), measured in the same run.
    python bench/bench_refresh.py [--scales 1,20] [--load-repeat 3] [--refresh-repeat 21]

The databases' refreshes take turns (one each, 21 rounds), so that a shared machine's slow
minutes do not fall on one database only.

The last column is the least time any loader could take with this schema: SQLite alone copying
the loaded rows from another SQLite file (no CSV, no Python per row), building the same indices
and committing, with foreign keys and the payment trigger set aside and the rollback journal, as
``load_raw`` does.

"Its CPU s" is the processor time the load used on all its threads together: divided by the
machine's cores it is the least time any schedule of the same work could take (this machine
has ``os.cpu_count()`` cores, printed under the table).
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from sqlalchemy.dialects import sqlite as sqlite_dialect  # noqa: E402
from sqlalchemy.schema import CreateIndex  # noqa: E402

from clinic_lib.core import db  # noqa: E402
from clinic_lib.core.migrate import SQLITE_PAYMENT_INSERT_TRIGGER  # noqa: E402
from clinic_lib.ingest.refresh import LOAD_ORDER, load_raw, refresh_day  # noqa: E402

from common import CACHE, Results, demo_data, empty_sqlite, loaded_sqlite, table, timed  # noqa: E402


def sqlite_alone(source: Path) -> float:
    """Seconds SQLite itself takes to copy the clinic's rows of ``source`` into an empty
    database of the current schema, build the indices and commit (the floor of any load)."""
    target = CACHE / "floor.db"
    empty_sqlite(target).dispose()
    indexes = [ix for name in LOAD_ORDER for ix in db.metadata.tables[name].indexes]
    con = sqlite3.connect(target, isolation_level=None)
    # the settings of load_raw's connection (db.begin_bulk_write, alone on the file)
    for pragma in ("journal_mode = DELETE", "synchronous = FULL", "threads = 2", "foreign_keys = OFF"):
        con.execute(f"PRAGMA {pragma}")
    con.execute(f"ATTACH DATABASE '{source}' AS source")
    t0 = time.perf_counter()
    con.execute("BEGIN IMMEDIATE")
    for ix in indexes:
        con.execute(f"DROP INDEX {ix.name}")
    con.execute(f"DROP TRIGGER {SQLITE_PAYMENT_INSERT_TRIGGER[0]}")
    for name in LOAD_ORDER:
        con.execute(f"INSERT INTO main.{name} SELECT * FROM source.{name}")
    for ix in indexes:
        con.execute(str(CreateIndex(ix).compile(dialect=sqlite_dialect.dialect())))
    con.execute(SQLITE_PAYMENT_INSERT_TRIGGER[1])
    con.execute("COMMIT")
    seconds = time.perf_counter() - t0
    con.close()
    return seconds


def load_once(data: Path, target: Path) -> tuple[float, float]:
    """Wall-clock seconds of one load and the CPU seconds it used on all its threads."""
    engine = empty_sqlite(target)
    t0, cpu0 = time.perf_counter(), time.process_time()
    load_raw(engine, folder=data / "raw")
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    engine.dispose()
    return seconds, cpu


def measure_load(scale: int, history_scale: int, repeat: int):
    data = demo_data(scale, history_scale=history_scale)
    target = CACHE / f"loadbench-{scale}x-h{history_scale}.db"
    # Loads vary by 20-30 % from run to run on these machines (disk writes): take the median.
    loads = sorted(load_once(data, target) for _ in range(repeat))
    load_s, load_cpu = loads[len(loads) // 2]  # the median load, and its CPU time
    engine = db.make_engine(f"sqlite:///{target}")
    with engine.connect() as conn:
        n_appts = conn.exec_driver_sql("SELECT COUNT(*) FROM appointments").scalar()
    engine.dispose()
    floor_s = statistics.median(sqlite_alone(target) for _ in range(repeat))
    return n_appts, load_s, load_cpu, floor_s


def refresh_of_a_working_day(scale: int, history_scale: int):
    """A loaded copy of the demo at this scale, and a function refreshing its first working day
    of drops (applied in order up to it, so every repeat does the full work of the day)."""
    url, data = loaded_sqlite(scale, history_scale=history_scale)
    engine = db.make_engine(url)
    for day in sorted(p.name for p in (data / "daily").iterdir()):
        refresh_day(day, engine=engine, folder=data / "daily" / day, allow_empty=True)
        with engine.connect() as conn:
            n_day = conn.exec_driver_sql(f"SELECT COUNT(*) FROM appointments WHERE local_date = '{day}'").scalar()
        if n_day:
            break
    return n_day, lambda: refresh_day(day, engine=engine, folder=data / "daily" / day)


SUBJECT = "Initial load and daily refresh"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scales", default="1,20")
    parser.add_argument("--load-repeat", type=int, default=3, help="loads per database (median)")
    parser.add_argument("--refresh-repeat", type=int, default=21, help="refreshes per database (median)")
    args = parser.parse_args()
    results = Results("refresh")
    scales = [int(s) for s in args.scales.split(",")]
    variants = [(1, 1, "1x: 8 physios, 2 years")]
    if 20 in scales:
        variants += [(1, 20, "20x history: 8 physios, 40 years"), (20, 1, "20x clinic: 160 physios, 2 years")]
    loads = [measure_load(scale, history, args.load_repeat) for scale, history, _ in variants]
    refreshes = [refresh_of_a_working_day(scale, history) for scale, history, _ in variants]
    # The databases take turns, one refresh each: a slow minute of a shared machine then slows
    # every database's refreshes alike instead of one database's (the "vs 1x" column).
    times = [[] for _ in variants]
    for _ in range(args.refresh_repeat):
        for (_, refresh), measured in zip(refreshes, times):
            measured.extend(timed(refresh, repeat=1))
    base = statistics.median(times[0])
    results.note(SUBJECT, "SQLite. 1x: the demo clinic (8 physios, 2 years); 20x history: the same 8 physios over "
                 "40 years (the same daily volume); 20x clinic: 160 physios over 2 years. Loads: the median of "
                 f"{args.load_repeat}; refresh_day of the first working day of drops: the median of "
                 f"{args.refresh_repeat} rounds in which the databases take turns. The floor of a load: SQLite alone "
                 "copying the loaded rows from another SQLite file (no CSV, no Python per row), building the same "
                 "indices and committing, with load_raw's settings.")
    rows = []
    for (scale, history, label), (n_appts, load_s, load_cpu, floor_s), (n_day, _), measured in zip(
            variants, loads, refreshes, times):
        med = statistics.median(measured)
        rows.append([label, f"{n_appts:,}", f"{load_s:.2f}", f"{load_cpu:.2f}", f"{n_appts / load_s:,.0f}", n_day,
                     f"{med * 1000:.0f}", f"{min(measured) * 1000:.0f}", f"{med / base:.2f}x",
                     f"{floor_s:.2f} s = {n_appts / floor_s:,.0f}", f"{load_s / floor_s:.1f}x"])
        name = label.split(":")[0]
        detail = (f"{n_appts:,} appointments, {n_appts / load_s:,.0f} rows/s; {load_cpu:.1f} CPU s on all threads; "
                  f"SQLite alone {floor_s:.2f} s")
        if scale * history == 1:
            results.info(SUBJECT, f"initial load, {name} (fixed costs weigh at this size)", load_s, "s",
                         detail=f"{detail} ({load_s / floor_s:.1f}x)")
        else:
            results.ratio(SUBJECT, f"initial load, {name}", load_s, "s", floor=floor_s,
                          floor_measure="SQLite alone copying the same rows", at_most=3, detail=detail)
    for (scale, history, label), (n_day, _), measured in zip(variants, refreshes, times):
        med, name = statistics.median(measured), label.split(":")[0]
        detail = f"{n_day:,} appointments that day; min {min(measured) * 1000:.0f} ms"
        if scale == history == 1:
            results.absolute(SUBJECT, "refresh_day, 1x", med * 1000, "ms", at_most=200, detail=detail)
        elif history > 1:
            results.ratio(SUBJECT, f"refresh_day, {name}", med * 1000, "ms", floor=base * 1000,
                          floor_measure="refresh_day at 1x", at_most=1.3, detail=detail)
        else:
            results.info(SUBJECT, f"refresh_day, {name} (20 times the day's rows)", med * 1000, "ms",
                         detail=f"{detail}; {med / base:.2f}x the 1x time")
    print(table(["database", "appointments", "initial load s", "its CPU s (all threads)",
                 "appointment rows/s loaded", "appointments that day", "refresh_day median ms", "min ms",
                 "vs 1x", "SQLite alone: copy + indices + commit, rows/s", "load / SQLite alone"], rows))
    print(f"{os.cpu_count()} cores")
    results.save()


if __name__ == "__main__":
    main()
