"""Catching up on missed days: validate and refresh each day of a range in order, in one process.

``run_daily.py --from D1 --to D2`` uses this (through ``notebooks/backfill.ipynb``, one kernel for
the whole range) for the days before the last that have a drop, then runs the requested steps for
the last day: scores, callback lists and reminders are for the day ahead, so past days need none.
Days without a drop folder never get here: the runner records them (a closed day, or a day off
the roster) or refuses the range before anything runs (a roster day whose export is missing).
"""
from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable

import pandas as pd
import sqlalchemy as sa

from .refresh import refresh_day
from .timeutil import parse_day


def days_between(first, last) -> list[dt.date]:
    first, last = parse_day(first), parse_day(last)
    return [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]


def parse_days(text: str | None) -> list[dt.date]:
    """'2026-02-14,2026-02-15' -> the days, in the order given; '' or None -> none."""
    return [parse_day(part.strip()) for part in (text or "").split(",") if part.strip()]


def validate_and_refresh(days, engine: sa.Engine, on_day: Callable[[dict], None] | None = None,
                         allow_empty: bool = False, steps: Iterable[str] = ("validate", "refresh"),
                         closed: Iterable = ()) -> pd.DataFrame:
    """Each day in order: validate its drop, stop at the first with errors, else refresh it.

    ``steps`` says which of the two run (``("validate",)``: check the drops, write nothing);
    the days in ``closed`` (or every day, with ``allow_empty``) may have a drop without rows.
    Returns one row per day done (day, validation status, warnings, rows read/written, seconds);
    the first bad day raises ``ValidationFailed`` (or the refresh's error) with that day's report,
    after the days before it were applied.
    """
    from .validate import validate_drop
    steps = set(steps)
    closed = {parse_day(d) for d in closed}
    done = []
    for day in days:
        day = parse_day(day)
        empty_ok = allow_empty or day in closed
        t0 = time.perf_counter()
        row = {"day": str(day), "validation": "not run", "warnings": 0, "rows_read": 0, "rows_written": 0,
               "deleted": 0}
        if "validate" in steps:
            report = validate_drop(day, engine=engine, allow_empty=empty_ok)
            report.raise_for_errors()
            row.update(validation=report.status, warnings=len(report.warnings))
        if "refresh" in steps:
            result = refresh_day(day, engine=engine, allow_empty=empty_ok)
            row.update(rows_read=result.rows_read, rows_written=result.rows_written, deleted=result.deleted)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        done.append(row)
        if on_day:
            on_day(row)
    return pd.DataFrame(done)
