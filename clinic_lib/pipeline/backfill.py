"""Catching up on missed days: each day of a range in order, in one process, as its evening would have run.

``run_daily.py --from D1 --to D2`` uses this (through ``notebooks/backfill.ipynb``, one kernel for
the whole range) for every day but the last, then runs the full chain for the last day. Each earlier
day is validated and refreshed, then its evening is replayed (``replay_evening``): the model
monitoring of the days whose outcomes just arrived, a retrain when the retrain rule asks for one
(the model's age counted in clinic days: days of data it has not seen), and the next clinic day's
scores and call list, made with only what was known that evening. So a catch-up leaves the record a
nightly run would have left, and the monitoring judges the model on every day of it. Reminders are
not replayed: they are emails to patients, and those days have passed. An evening is replayed only
while no later day's drop is in the database (a range run again keeps the scores and lists its first
run made): after that, the database no longer holds what that evening knew.
Days without a drop folder never get here: the runner records them (a closed day, or a day off
the roster) or refuses the range before anything runs (a roster day whose export is missing).
"""
from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable

import pandas as pd
import sqlalchemy as sa

from clinic_lib.core.timeutil import parse_day
from clinic_lib.ingest.refresh import refresh_day


def days_between(first, last) -> list[dt.date]:
    first, last = parse_day(first), parse_day(last)
    return [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]


def replay_evening(day, engine: sa.Engine) -> dict:
    """The evening of a past ``day`` after its refresh: monitoring, a retrain when due, the next
    clinic day's scores and call list (see the module doc). Returns what was done."""
    from clinic_lib.core.clinic_days import next_clinic_day
    from clinic_lib.modeling.evaluate import NotEnoughData
    from clinic_lib.modeling.monitoring import latest_drop_day, update_monitoring
    from clinic_lib.modeling.predict import model_path, score_day
    from clinic_lib.modeling.retraining import retrain_decision
    from clinic_lib.modeling.train import train
    from clinic_lib.reception.priorities import build_priorities
    day = parse_day(day)
    update_monitoring(day, engine)
    with engine.connect() as conn:
        latest = latest_drop_day(conn)
    if latest and latest > day.isoformat():
        # A later day's drop is in already (a catch-up run again): the database is no longer what
        # this evening knew, so its scores and list stay as they were made.
        return {"retrained": "", "retrain_reason": "", "scored_day": "", "scored": 0, "listed": 0,
                "evening": f"kept: the drop of {latest} is applied already"}
    decision = retrain_decision(day, engine, age_in_clinic_days=True)
    trained = ""
    if decision.retrain:
        try:
            trained = train(as_of=day, engine=engine, retrain_reason=str(decision.reason)).model_version
        except NotEnoughData:
            trained = "too little history"
    target = next_clinic_day(engine, day)
    scored = 0
    if model_path().exists():
        scored = len(score_day(target, engine).scores)
    listed = len(build_priorities(target, engine).frame)
    return {"retrained": trained, "retrain_reason": str(decision.reason or ""), "scored_day": str(target),
            "scored": scored, "listed": listed, "evening": "replayed"}


def parse_days(text: str | None) -> list[dt.date]:
    """'2026-02-14,2026-02-15' -> the days, in the order given; '' or None -> none."""
    return [parse_day(part.strip()) for part in (text or "").split(",") if part.strip()]


def validate_and_refresh(days, engine: sa.Engine, on_day: Callable[[dict], None] | None = None,
                         allow_empty: bool = False, steps: Iterable[str] = ("validate", "refresh"),
                         closed: Iterable = (), evenings: bool = True) -> pd.DataFrame:
    """Each day in order: validate its drop, stop at the first with errors, else refresh it and
    (with ``evenings``) replay its evening.

    ``steps`` says which of the two run (``("validate",)``: check the drops, write nothing);
    the days in ``closed`` (or every day, with ``allow_empty``) may have a drop without rows.
    Returns one row per day done (day, validation status, warnings, rows read/written, seconds);
    the first bad day raises ``ValidationFailed`` (or the refresh's error) with that day's report,
    after the days before it were applied.
    """
    from clinic_lib.validation.drop import validate_drop
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
            if evenings:
                row.update(replay_evening(day, engine))
        row["seconds"] = round(time.perf_counter() - t0, 3)
        done.append(row)
        if on_day:
            on_day(row)
    return pd.DataFrame(done)
