"""The roster and its history: which weekly blocks each physio works on each day.

A ``physio_hours`` row is one block of a physio's week (``weekday``, local ``start_time`` ..
``end_time``) with the days it holds for: ``valid_from`` .. ``valid_to``, both included, NULL
meaning unbounded on that side. A block counts on date d when ``weekday(d) == weekday`` and d
lies in its days. When a physio's hours change or the physio leaves, the days before keep the
roster they had and the days after get the new one:

- the initial load stores the file's blocks open-ended (the export says nothing of the past),
  except for physios who have already left (``active`` 0): their blocks end on the day of their
  last appointment in the load (``end_leavers_rosters``; migration 4 does the same for databases
  from before roster history);
- a drop for day D that holds ``physio_hours.csv`` gives the physios it names that roster from D
  on, up to the next change a later drop recorded (``roster_from``);
- a drop for day D that marks a physio inactive ends the physio's roster after D: D was their
  last day (``roster_ends_after``).

Applying a drop again, or an older drop after newer ones, gives the same rows (each change
covers only the days up to the next recorded one, and equal blocks on adjacent days are kept as
one row). ``kpis.roster_minutes``, ``calendar.next_clinic_day``, the roster check of
``validate.py`` and the dashboard's physio filter read the roster valid on each day.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import NamedTuple

import pandas as pd
import sqlalchemy as sa

from clinic_lib.core import db

ONE_DAY = dt.timedelta(days=1)


class Block(NamedTuple):
    """One row of physio_hours for one physio (dates as ``datetime.date``; None: unbounded)."""
    weekday: int
    start_time: str
    end_time: str
    valid_from: dt.date | None
    valid_to: dt.date | None


def _date(value) -> dt.date | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value)[:10])


def valid_on_sql(alias: str, day_param: str) -> str:
    """SQL: the block ``alias`` holds on the day bound as ``day_param`` (a placeholder or literal)."""
    return (f"({alias}.valid_from IS NULL OR {alias}.valid_from <= {day_param}) "
            f"AND ({alias}.valid_to IS NULL OR {alias}.valid_to >= {day_param})")


def read_blocks(conn: sa.Connection, physio_ids: Iterable[int] | None = None) -> dict[int, list[Block]]:
    """Every physio's blocks (or those of ``physio_ids``), by physio."""
    t = db.physio_hours
    query = sa.select(t.c.physio_id, t.c.weekday, t.c.start_time, t.c.end_time, t.c.valid_from, t.c.valid_to)
    if physio_ids is not None:
        ids = [int(i) for i in physio_ids]
        if not ids:
            return {}
        query = query.where(t.c.physio_id.in_(ids))
    out: dict[int, list[Block]] = {}
    for r in conn.execute(query):
        out.setdefault(int(r.physio_id), []).append(
            Block(int(r.weekday), r.start_time, r.end_time, _date(r.valid_from), _date(r.valid_to)))
    return out


def merged(blocks: Iterable[Block]) -> list[Block]:
    """The same days as ``blocks`` with equal blocks on overlapping or adjacent days as one row."""
    out: list[Block] = []
    key = lambda b: (b.weekday, b.start_time, b.end_time)  # noqa: E731
    low = dt.date.min
    for block in sorted(blocks, key=lambda b: (key(b), b.valid_from or low)):
        if out and key(out[-1]) == key(block):
            last = out[-1]
            if last.valid_to is None or block.valid_from is None or block.valid_from <= last.valid_to + ONE_DAY:
                to = None if last.valid_to is None or block.valid_to is None else max(last.valid_to, block.valid_to)
                out[-1] = last._replace(valid_to=to)
                continue
        out.append(block)
    return out


def next_change(blocks: Iterable[Block], after: dt.date) -> dt.date | None:
    """The first day after ``after`` on which the roster changes (a block starts, or one ended
    the day before): the change a later drop recorded. None: no change after ``after``."""
    days = [b.valid_from for b in blocks if b.valid_from is not None and b.valid_from > after]
    days += [b.valid_to + ONE_DAY for b in blocks if b.valid_to is not None and b.valid_to + ONE_DAY > after]
    return min(days, default=None)


def overwrite(blocks: Iterable[Block], start: dt.date, stop: dt.date | None,
              week: Iterable[tuple[int, str, str]]) -> list[Block]:
    """``blocks`` with the days ``start`` .. ``stop`` (excluded; None: open) given the weekly
    roster ``week`` ((weekday, start_time, end_time) each; empty: no roster those days)."""
    out = []
    for b in blocks:
        if b.valid_from is None or b.valid_from < start:  # the part before start stays
            out.append(b._replace(valid_to=b.valid_to if b.valid_to is not None and b.valid_to < start
                                  else start - ONE_DAY))
        if stop is not None and (b.valid_to is None or b.valid_to >= stop):  # the part from stop on stays
            out.append(b._replace(valid_from=stop if b.valid_from is None else max(b.valid_from, stop)))
    last = None if stop is None else stop - ONE_DAY
    out += [Block(int(w), s, e, start, last) for w, s, e in week]
    return merged(out)


def roster_from(blocks: list[Block], day: dt.date, week: Iterable[tuple[int, str, str]]) -> list[Block]:
    """A drop for ``day`` that holds the physio's weekly roster ``week``: from ``day`` up to the
    next change recorded after it."""
    return overwrite(blocks, day, next_change(blocks, day), week)


def roster_ends_after(blocks: list[Block], day: dt.date) -> list[Block]:
    """A drop for ``day`` that marks the physio inactive: no roster after ``day``, up to the next
    change recorded after it (a return with new hours)."""
    return overwrite(blocks, day + ONE_DAY, next_change(blocks, day + ONE_DAY), [])


def apply_drop(blocks_by_physio: dict[int, list[Block]], day: dt.date, hours: pd.DataFrame | None,
               leavers: Iterable[int]) -> dict[int, list[Block]]:
    """The blocks after a drop for ``day``: its ``physio_hours`` rows (physio_id, weekday,
    start_time, end_time) give the physios they name their roster from ``day``; ``leavers``
    (marked inactive in the drop) end theirs after ``day``. Returns the changed physios only."""
    changed: dict[int, list[Block]] = {}
    if hours is not None and len(hours):
        for physio_id, rows in hours.groupby("physio_id"):
            week = list(zip(rows["weekday"].astype(int), rows["start_time"], rows["end_time"]))
            changed[int(physio_id)] = roster_from(blocks_by_physio.get(int(physio_id), []), day, week)
    for physio_id in leavers:
        physio_id = int(physio_id)
        current = changed.get(physio_id, blocks_by_physio.get(physio_id, []))
        if current:
            changed[physio_id] = roster_ends_after(current, day)
    return changed


def write_blocks(conn: sa.Connection, changed: dict[int, list[Block]]) -> int:
    """Replace the rows of the physios in ``changed`` (inside the caller's transaction)."""
    if not changed:
        return 0
    t = db.physio_hours
    conn.execute(t.delete().where(t.c.physio_id.in_(list(changed))))
    rows = [{"physio_id": p, "weekday": b.weekday, "start_time": b.start_time, "end_time": b.end_time,
             "valid_from": b.valid_from, "valid_to": b.valid_to} for p, blocks in changed.items() for b in blocks]
    if rows:
        conn.execute(t.insert(), rows)
    return len(rows)


def apply_drop_to_database(conn: sa.Connection, day: dt.date, hours: pd.DataFrame | None,
                           physios: pd.DataFrame | None) -> int:
    """The refresh's roster part for the drop of ``day`` (see the module docstring)."""
    leavers = [] if physios is None or not len(physios) else \
        [int(i) for i in physios.loc[physios["active"].astype(int) == 0, "physio_id"]]
    named = set() if hours is None else {int(i) for i in hours["physio_id"].unique()}
    if not named and not leavers:
        return 0
    current = read_blocks(conn, named | set(leavers))
    return write_blocks(conn, apply_drop(current, day, hours, leavers))


def end_leavers_rosters(conn: sa.Connection) -> int:
    """Open-ended blocks of physios who have left (``active`` 0) end on the day of their last
    appointment (no appointment: the day before the data's first). For the initial load and for
    databases from before roster history. Returns the rows changed."""
    h, p, a = db.physio_hours, db.physios, db.appointments
    leavers = sa.select(p.c.physio_id).where(p.c.active == 0)
    last = (sa.select(sa.func.max(a.c.local_date)).where(a.c.physio_id == h.c.physio_id)
            .scalar_subquery())
    first_day = conn.execute(sa.select(sa.func.min(a.c.local_date))).scalar()
    before_data = None if first_day is None else _date(first_day) - ONE_DAY
    open_rows = sa.and_(h.c.valid_to.is_(None), h.c.physio_id.in_(leavers))
    n = conn.execute(h.update().where(open_rows, sa.exists().where(a.c.physio_id == h.c.physio_id))
                     .values(valid_to=last)).rowcount
    if before_data is not None:
        n += conn.execute(h.update().where(open_rows).values(valid_to=before_data)).rowcount
    # a leaver's block that starts after their last day holds on no day at all
    conn.execute(h.delete().where(h.c.valid_from.is_not(None), h.c.valid_to.is_not(None),
                                  h.c.valid_to < h.c.valid_from))
    return n


def as_frame(blocks_by_physio: dict[int, list[Block]]) -> pd.DataFrame:
    """Blocks as a frame: physio_id, weekday, start_time, end_time, valid_from, valid_to (dates
    as 'YYYY-MM-DD' text or None), the form ``roster_outside`` reads."""
    rows = [(p, b.weekday, b.start_time, b.end_time, b.valid_from and b.valid_from.isoformat(),
             b.valid_to and b.valid_to.isoformat()) for p, blocks in sorted(blocks_by_physio.items()) for b in blocks]
    return pd.DataFrame(rows, columns=["physio_id", "weekday", "start_time", "end_time", "valid_from", "valid_to"])


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def weekday_count(weekday: int, first: dt.date, last: dt.date) -> int:
    """How many dates with ``weekday`` lie in ``first`` .. ``last`` (0 when last < first)."""
    if last < first:
        return 0
    offset = (weekday - first.weekday()) % 7
    span = (last - first).days - offset
    return 0 if span < 0 else span // 7 + 1


def rostered_minutes(blocks_by_physio: dict[int, list[Block]], start: dt.date, end: dt.date) -> dict[int, int]:
    """Per physio, the minutes of the blocks valid on each date of ``start`` .. ``end``."""
    out: dict[int, int] = {}
    for physio_id, blocks in blocks_by_physio.items():
        total = 0
        for b in blocks:
            first = start if b.valid_from is None else max(start, b.valid_from)
            last = end if b.valid_to is None else min(end, b.valid_to)
            total += (_minutes(b.end_time) - _minutes(b.start_time)) * weekday_count(b.weekday, first, last)
        out[physio_id] = total
    return out
