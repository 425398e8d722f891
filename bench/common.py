"""Shared by the bench scripts: demo databases at a given scale, built once and cached in /tmp."""
from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from pathlib import Path

BENCH_TODAY = dt.date(2026, 11, 24)
CACHE = Path(os.environ.get("CLINIC_BENCH_CACHE", "/tmp/clinic-bench"))


def demo_data(scale: int, drop_days: int = 31, history_scale: int = 1) -> Path:
    """data dir with the demo clinic at ``scale`` (1x = 8 physios, 3,200 patients, 2 years).

    ``history_scale`` lengthens the history instead (same clinic, same daily volume, 20 x 2 years),
    which is what "a day's refresh must not grow with history" is about.
    """
    from clinic_lib.ingest.demo import generate_demo
    folder = CACHE / f"data-{scale}x-h{history_scale}-v2"
    if not (folder / "raw" / "appointments.csv").exists():
        shutil.rmtree(folder, ignore_errors=True)
        generate_demo(folder, seed=7, today=BENCH_TODAY, physios=8 * scale, patients=3200 * scale * history_scale,
                      days_history=730 * history_scale, days_ahead=21, drop_days=drop_days)
    return folder


def loaded_sqlite(scale: int, name: str = "clinic", history_scale: int = 1) -> tuple[str, Path]:
    """A SQLite copy of the demo at ``scale`` after the initial load (copied fresh each call)."""
    from clinic_lib.core import db
    from clinic_lib.core.migrate import CURRENT_VERSION
    from clinic_lib.ingest.refresh import load_raw
    data = demo_data(scale, history_scale=history_scale)
    master = CACHE / f"loaded-{scale}x-h{history_scale}-schema{CURRENT_VERSION}.db"  # new schema: new load
    if not master.exists():
        engine = db.make_engine(f"sqlite:///{master}")
        load_raw(engine, folder=data / "raw")
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        engine.dispose()
    target = CACHE / f"{name}-{scale}x-h{history_scale}.db"
    remove_sqlite(target)
    shutil.copy(master, target)
    return f"sqlite:///{target}", data


def remove_sqlite(path: Path) -> None:
    """Delete a SQLite database file with its WAL and shared-memory files."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def empty_sqlite(path: Path):
    """An engine on a new, empty SQLite database of the current schema at ``path``."""
    from clinic_lib.core import db
    from clinic_lib.core.migrate import migrate
    remove_sqlite(path)
    engine = db.make_engine(f"sqlite:///{path}")
    migrate(engine)
    return engine


def timed(fn, repeat: int = 5) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
