"""Initial load and daily refresh speed on SQLite, at 1x and 20x.

Targets (issue 2): refresh_day at 1x <= 0.2 s in-process, at 20x <= 1.3x its 1x time;
initial load >= 200,000 appointment rows per second into SQLite.
    python bench/bench_refresh.py [--scales 1,20]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import BENCH_TODAY, CACHE, demo_data, loaded_sqlite, table, timed  # noqa: E402

from clinic_lib import db  # noqa: E402
from clinic_lib.migrate import migrate  # noqa: E402
from clinic_lib.refresh import load_raw, refresh_day  # noqa: E402


def measure(scale: int, history_scale: int):
    data = demo_data(scale, history_scale=history_scale)
    target = CACHE / f"loadbench-{scale}x-h{history_scale}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(target) + suffix).unlink(missing_ok=True)
    engine = db.make_engine(f"sqlite:///{target}")
    migrate(engine)
    t0 = time.perf_counter()
    load_raw(engine, folder=data / "raw")
    load_s = time.perf_counter() - t0
    with engine.connect() as conn:
        n_appts = conn.exec_driver_sql("SELECT COUNT(*) FROM appointments").scalar()
    engine.dispose()
    url, _ = loaded_sqlite(scale, history_scale=history_scale)
    engine = db.make_engine(url)
    # Drops apply in order on top of raw: apply them up to the first working day, then refresh that
    # day again and again (idempotent, so every repeat does the full work of the day).
    for day in sorted(p.name for p in (data / "daily").iterdir()):
        refresh_day(day, engine=engine, folder=data / "daily" / day, allow_empty=True)
        with engine.connect() as conn:
            n_day = conn.exec_driver_sql(f"SELECT COUNT(*) FROM appointments WHERE local_date = '{day}'").scalar()
        if n_day:
            break
    times = timed(lambda: refresh_day(day, engine=engine, folder=data / "daily" / day), repeat=7)
    return n_appts, load_s, statistics.median(times), min(times), n_day


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scales", default="1,20")
    scales = [int(s) for s in parser.parse_args().scales.split(",")]
    rows, base = [], None
    variants = [(1, 1, "1x: 8 physios, 2 years")]
    if 20 in scales:
        variants += [(1, 20, "20x history: 8 physios, 40 years"), (20, 1, "20x clinic: 160 physios, 2 years")]
    for scale, history, label in variants:
        n_appts, load_s, med, best, n_day = measure(scale, history)
        base = base or med
        rows.append([label, f"{n_appts:,}", f"{load_s:.2f}", f"{n_appts / load_s:,.0f}", n_day,
                     f"{med * 1000:.0f}", f"{best * 1000:.0f}", f"{med / base:.2f}x"])
    print(table(["database", "appointments", "initial load s", "appointment rows/s loaded",
                 "appointments that day", "refresh_day median ms", "min ms", "vs 1x"], rows))


if __name__ == "__main__":
    main()
