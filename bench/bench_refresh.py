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
from clinic_lib.refresh import load_raw, refresh_day  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scales", default="1,20")
    scales = [int(s) for s in parser.parse_args().scales.split(",")]
    rows, refresh_1x = [], None
    for scale in scales:
        data = demo_data(scale)
        target = CACHE / f"loadbench-{scale}x.db"
        for suffix in ("", "-wal", "-shm"):
            Path(str(target) + suffix).unlink(missing_ok=True)
        engine = db.make_engine(f"sqlite:///{target}")
        from clinic_lib.migrate import migrate
        migrate(engine)
        t0 = time.perf_counter()
        load_raw(engine, folder=data / "raw")
        load_s = time.perf_counter() - t0
        with engine.connect() as conn:
            n_appts = conn.exec_driver_sql("SELECT COUNT(*) FROM appointments").scalar()
        url, _ = loaded_sqlite(scale)
        engine = db.make_engine(url)
        day = BENCH_TODAY
        times = timed(lambda: refresh_day(day, engine=engine, folder=data / "daily" / str(day)), repeat=7)
        med = statistics.median(times)
        refresh_1x = refresh_1x or (med if scale == 1 else None)
        ratio = f"{med / refresh_1x:.2f}x of 1x" if refresh_1x and scale != 1 else "-"
        rows.append([f"{scale}x", f"{n_appts:,}", f"{load_s:.2f}", f"{n_appts / load_s:,.0f}",
                     f"{med * 1000:.0f}", f"{min(times) * 1000:.0f}", ratio])
    print(table(["scale", "appointments", "initial load s", "appointment rows/s (target >= 200,000)",
                 "refresh_day median ms (target 1x <= 200)", "min ms", "20x vs 1x (target <= 1.3)"], rows))


if __name__ == "__main__":
    main()
