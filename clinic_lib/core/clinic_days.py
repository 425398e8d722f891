"""The clinic's calendar: which days the clinic works, from the physios' roster.

``next_clinic_day(engine, day)`` is the first date after ``day`` on which at least one *active*
physio has a roster block that holds that day (``physio_hours``: weekday 0 = Monday .. 6 = Sunday,
and the days ``valid_from`` .. ``valid_to`` of ``roster.py``). With a Monday to Friday roster, the
day after a Friday (or a Saturday, or a Sunday) is the following Monday; a roster that changes
from a date on is read as it holds on each day. A database without any roster yet (a fresh
install, or the public no-show import, which has no practitioners) is treated as a Monday to
Friday clinic.
"""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from clinic_lib.core import db
from clinic_lib.core.roster import Block, _date
from clinic_lib.core.timeutil import parse_day

WEEKDAYS_WITHOUT_ROSTER = frozenset(range(5))  # Monday .. Friday
SEARCH_DAYS = 366  # how far ahead next_clinic_day looks for a roster day before assuming Monday to Friday


def _active_blocks(engine_or_conn) -> list[Block]:
    """The roster blocks of the active physios, all their days."""
    h = db.physio_hours
    query = (sa.select(h.c.weekday, h.c.start_time, h.c.end_time, h.c.valid_from, h.c.valid_to)
             .select_from(h.join(db.physios, db.physios.c.physio_id == h.c.physio_id))
             .where(db.physios.c.active == 1))
    if isinstance(engine_or_conn, sa.Engine):
        with engine_or_conn.connect() as conn:
            rows = conn.execute(query).all()
    else:
        rows = engine_or_conn.execute(query).all()
    return [Block(int(w), s, e, _date(f), _date(t)) for w, s, e, f, t in rows]


def _holds(block: Block, day: dt.date) -> bool:
    return (block.valid_from is None or block.valid_from <= day) and (block.valid_to is None or day <= block.valid_to)


def works_on(blocks: list[Block], day: dt.date) -> bool:
    """Whether ``blocks`` (of active physios) put anyone to work on ``day``; no roster at all:
    Monday to Friday."""
    if not blocks:
        return day.weekday() in WEEKDAYS_WITHOUT_ROSTER
    return any(b.weekday == day.weekday() and _holds(b, day) for b in blocks)


def working_weekdays(engine_or_conn, day=None) -> frozenset[int]:
    """The weekdays (0 = Monday) of the weekly roster in force on ``day`` (default: today in
    CLINIC_TZ): those on which an active physio has a block holding that day."""
    if day is None:
        from clinic_lib.core.config import get_settings
        from clinic_lib.core.timeutil import today_local
        day = today_local(get_settings().clinic_tz)
    day = parse_day(day)
    days = {b.weekday for b in _active_blocks(engine_or_conn) if _holds(b, day)}
    return frozenset(days) or WEEKDAYS_WITHOUT_ROSTER


def is_clinic_day(engine_or_conn, day) -> bool:
    """Whether the roster in force on ``day`` has an active physio working that day."""
    return works_on(_active_blocks(engine_or_conn), parse_day(day))


def next_clinic_day(engine: sa.Engine | None = None, day=None) -> dt.date:
    """The first clinic day strictly after ``day`` (default: today in CLINIC_TZ)."""
    engine = engine or db.make_engine()
    day = parse_day(day) if day is not None else clinic_today()
    blocks = _active_blocks(engine)
    for n in range(1, SEARCH_DAYS + 1):
        candidate = day + dt.timedelta(days=n)
        if works_on(blocks, candidate):
            return candidate
    # a roster that ends for good (every physio gone): the days of a Monday to Friday clinic
    return next(day + dt.timedelta(days=n) for n in range(1, 8)
                if (day + dt.timedelta(days=n)).weekday() in WEEKDAYS_WITHOUT_ROSTER)


# --- the days a run and its notebooks work on ----------------------------------------------------------

def clinic_today() -> dt.date:
    """Today in CLINIC_TZ."""
    from clinic_lib.core.config import get_settings
    from clinic_lib.core.timeutil import today_local
    return today_local(get_settings().clinic_tz)


def evening_day(day=None) -> dt.date:
    """The clinic day an evening's run closes: ``day`` (a date or YYYY-MM-DD), else today in CLINIC_TZ.
    The validate, refresh and train notebooks take their default day from here."""
    return parse_day(day) if day else clinic_today()


def day_ahead(day=None, engine: sa.Engine | None = None) -> dt.date:
    """The clinic day a list is made for: ``day``, else the next clinic day after today. The score,
    priorities and reminders notebooks take their default day from here."""
    return parse_day(day) if day else next_clinic_day(engine, clinic_today())
