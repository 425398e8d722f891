"""Catching up on missed days: validate and refresh each day of a range in order, in one process.

``run_daily.py --from D1 --to D2`` uses this (through ``notebooks/backfill.ipynb``, one kernel for
the whole range) for every day but the last, then runs the full chain for the last day: scores,
callback lists and reminders are for the day ahead, so past days need none.
"""
from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import pandas as pd
import sqlalchemy as sa

from .refresh import refresh_day
from .timeutil import parse_day


def days_between(first, last) -> list[dt.date]:
    first, last = parse_day(first), parse_day(last)
    return [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]


def validate_and_refresh(days, engine: sa.Engine, on_day: Callable[[dict], None] | None = None,
                         allow_empty: bool = False) -> pd.DataFrame:
    """Each day in order: validate its drop, stop at the first with errors, else refresh it.

    Returns one row per day done (day, validation status, warnings, rows read/written, seconds);
    the first bad day raises ``ValidationFailed`` (or the refresh's error) with that day's report,
    after the days before it were applied.
    """
    from .validate import validate_drop
    done = []
    for day in days:
        t0 = time.perf_counter()
        report = validate_drop(day, engine=engine, allow_empty=allow_empty)
        report.raise_for_errors()
        result = refresh_day(day, engine=engine, allow_empty=allow_empty)
        row = {"day": str(day), "validation": report.status, "warnings": len(report.warnings),
               "rows_read": result.rows_read, "rows_written": result.rows_written,
               "deleted": result.deleted, "seconds": round(time.perf_counter() - t0, 3)}
        done.append(row)
        if on_day:
            on_day(row)
    return pd.DataFrame(done)
