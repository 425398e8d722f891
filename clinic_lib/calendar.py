"""The clinic's calendar: which days the clinic works, from the physios' weekly roster.

``next_clinic_day(engine, day)`` is the first date after ``day`` on which at least one *active*
physio has roster hours (``physio_hours.weekday``, 0 = Monday .. 6 = Sunday). With a Monday to
Friday roster, the day after a Friday (or a Saturday, or a Sunday) is the following Monday.
A database without any roster yet (a fresh install, or the public no-show import, which has no
practitioners) is treated as a Monday to Friday clinic.
"""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from . import db
from .timeutil import parse_day

WEEKDAYS_WITHOUT_ROSTER = frozenset(range(5))  # Monday .. Friday


def working_weekdays(engine_or_conn) -> frozenset[int]:
    """The weekdays (0 = Monday) on which at least one active physio has roster hours."""
    query = (sa.select(db.physio_hours.c.weekday).distinct()
             .select_from(db.physio_hours.join(db.physios, db.physios.c.physio_id == db.physio_hours.c.physio_id))
             .where(db.physios.c.active == 1))
    if isinstance(engine_or_conn, sa.Engine):
        with engine_or_conn.connect() as conn:
            days = {int(d) for d in conn.execute(query).scalars()}
    else:
        days = {int(d) for d in engine_or_conn.execute(query).scalars()}
    return frozenset(days) or WEEKDAYS_WITHOUT_ROSTER


def is_roster_day(engine_or_conn, day) -> bool:
    """Is ``day`` a weekday on which at least one active physio has roster hours?"""
    return parse_day(day).weekday() in working_weekdays(engine_or_conn)


def next_clinic_day(engine: sa.Engine | None = None, day=None) -> dt.date:
    """The first clinic day strictly after ``day`` (default: today in CLINIC_TZ)."""
    from .config import get_settings
    from .timeutil import today_local
    engine = engine or db.make_engine()
    day = parse_day(day) if day is not None else today_local(get_settings().clinic_tz)
    weekdays = working_weekdays(engine)
    for n in range(1, 8):
        candidate = day + dt.timedelta(days=n)
        if candidate.weekday() in weekdays:
            return candidate
    raise AssertionError("unreachable: weekdays is never empty")
