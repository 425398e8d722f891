"""The evening call list as reception's screen shows it: a day's rows, the progress of the calls,
one appointment's call history, and recording a call with the name of whoever made it.

The rows come from the ``priorities`` table (``priorities.py`` builds it) joined with the
appointment, the patient, the physio, the reminder ledger and the latest call outcome with its
user: one statement, index lookups only (as the API's list).
"""
from __future__ import annotations

import datetime as dt
import re
from functools import lru_cache
from typing import NamedTuple

import sqlalchemy as sa

from clinic_lib.core import db
from clinic_lib.reception.api import MAX_NOTE
from clinic_lib.reception.priorities import day_param
from clinic_lib.reception.reminders import EMAIL_RE

OUTCOME_LABELS = {"reached": "Reached", "voicemail": "Voicemail", "no_answer": "No answer",
                  "confirmed": "Confirmed", "rescheduled": "Rescheduled", "canceled": "Canceled"}
assert tuple(OUTCOME_LABELS) == db.CALL_OUTCOMES
# the outcomes after which the patient has been spoken to: "reached" in the day's progress
SPOKEN_TO = ("reached", "confirmed", "rescheduled", "canceled")


class BadInput(ValueError):
    """A request the screen refuses; ``status`` is its HTTP status, the message says what is expected."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class LatestCall(NamedTuple):
    outcome: str
    note: str | None
    recorded_at: dt.datetime  # clinic-local
    recorded_by: str | None  # None: recorded through the API, or before accounts existed

    @property
    def label(self) -> str:
        return OUTCOME_LABELS[self.outcome]


class Row(NamedTuple):
    """One appointment of the list as the screen shows it (hashable: rendered rows are memoised)."""
    rank: int
    appointment_id: int
    patient_name: str
    phone: str | None
    physio_name: str | None
    start: dt.datetime  # clinic-local
    appointment_status: str  # now: an appointment canceled after the list was built says so
    risk_bucket: str
    risk_score: float
    risk_source: str
    priority_reason: str
    is_new_patient: bool
    missing_phone: bool
    missing_consent: bool
    holdout: bool  # held out of the calls at random (CALL_HOLDOUT_SHARE): do not call
    reminder: str  # emailed / pending / none
    no_reminder_reason: str | None
    calls: int
    spoken_to: bool
    latest: LatestCall | None
    latest_outcome_id: int | None

    @property
    def phone_uri(self) -> str | None:
        """``tel:`` URI of the phone number (digits and a leading +), None when it is missing."""
        if self.missing_phone or not self.phone:
            return None
        digits = "".join(ch for ch in self.phone if ch.isdigit())
        return "tel:" + ("+" if self.phone.strip().startswith("+") else "") + digits


class Progress(NamedTuple):
    """The rows to call (held-out rows are not), how many of them were called and reached, and the
    held-out rows."""
    total: int
    called: int
    spoken_to: int
    held_out: int = 0

    @property
    def text(self) -> str:
        held = f", {self.held_out} held out (not to call)" if self.held_out else ""
        return f"{self.called} of {self.total} called, {self.spoken_to} reached{held}"


def check_outcome(value) -> str:
    if value not in OUTCOME_LABELS:
        shown = repr(str(value)[:40]) if value is not None else "nothing"
        raise BadInput(400, f"Outcome {shown} is not one of: {', '.join(OUTCOME_LABELS.values())}. "
                            "Nothing was saved.")
    return value


def check_note(value) -> str | None:
    note = (value or "").strip()
    if len(note) > MAX_NOTE:
        raise BadInput(400, f"The note has {len(note):,} characters; at most {MAX_NOTE:,} are kept. "
                            "Shorten it; nothing was saved.")
    if "\x00" in note:
        raise BadInput(400, "The note holds a NUL character; nothing was saved.")
    return note or None


def _local(value, tz) -> dt.datetime:
    """A stored instant (UTC text on SQLite, a datetime on Postgres) in clinic-local time."""
    if not isinstance(value, dt.datetime):
        value = dt.datetime.fromisoformat(value)
    return value.astimezone(tz)


# The list's statement, written out once for both databases: it runs for every page and every
# recorded call, and building it with SQLAlchemy's expression language each time cost more than
# running it. Index lookups only: priorities(day, rank), the primary keys, reminders(appointment_id)
# and call_outcomes(appointment_id, outcome_id) for the latest outcome and the counts.
_MINE = "c.appointment_id = p.appointment_id"
_SPOKEN_TO = ", ".join(f"'{o}'" for o in SPOKEN_TO)
_ROWS = f"""SELECT p.rank, p.appointment_id, pt.first_name, pt.last_name, pt.phone, pt.email, pt.reminder_consent,
       ph.full_name, a.appt_start, a.status, p.risk_bucket, p.risk_score, p.risk_source, p.priority_reason,
       p.is_new_patient, p.missing_phone, p.missing_consent, p.holdout,
       (SELECT max(r.smtp_delivered) FROM reminders r WHERE r.appointment_id = p.appointment_id),
       (SELECT count(*) FROM call_outcomes c WHERE {_MINE}),
       CASE WHEN EXISTS (SELECT 1 FROM call_outcomes c WHERE {_MINE} AND c.outcome IN ({_SPOKEN_TO}))
            THEN 1 ELSE 0 END,
       lc.outcome_id, lc.outcome, lc.note, lc.recorded_at, u.name, p.built_at
  FROM priorities p
  JOIN appointments a ON a.appointment_id = p.appointment_id
  JOIN patients pt ON pt.patient_id = p.patient_id
  LEFT JOIN physios ph ON ph.physio_id = a.physio_id
  LEFT JOIN call_outcomes lc ON lc.outcome_id = (SELECT max(c.outcome_id) FROM call_outcomes c WHERE {_MINE})
  LEFT JOIN users u ON u.user_id = lc.recorded_by
 WHERE p.day = :day"""
DAY_ROWS_SQL = sa.text(_ROWS + " ORDER BY p.rank").bindparams(sa.bindparam("day", type_=db.Day()))
# one appointment, and every other one with an outcome newer than :seen (recorded by anyone)
# (the outcomes newer than :seen are few: a range of the primary key, not a probe per row)
SOME_ROWS_SQL = sa.text(_ROWS + """ AND p.appointment_id IN (
       SELECT CAST(:appointment_id AS BIGINT)
       UNION SELECT c.appointment_id FROM call_outcomes c WHERE c.outcome_id > :seen)
 ORDER BY p.rank""").bindparams(sa.bindparam("day", type_=db.Day()))
PROGRESS_SQL = sa.text(f"""SELECT coalesce(sum(CASE WHEN p.holdout = 0 THEN 1 ELSE 0 END), 0),
       coalesce(sum(CASE WHEN p.holdout = 0 AND EXISTS (SELECT 1 FROM call_outcomes c WHERE {_MINE})
                         THEN 1 ELSE 0 END), 0),
       coalesce(sum(CASE WHEN p.holdout = 0 AND EXISTS (SELECT 1 FROM call_outcomes c WHERE {_MINE}
                                        AND c.outcome IN ({_SPOKEN_TO})) THEN 1 ELSE 0 END), 0),
       coalesce(sum(CASE WHEN p.holdout = 0 THEN 0 ELSE 1 END), 0)
  FROM priorities p WHERE p.day = :day""").bindparams(sa.bindparam("day", type_=db.Day()))
NEWEST = 2**62  # "seen" that no outcome id passes: only the one appointment


def _reminder(delivered, consent, email, smtp_configured: bool) -> tuple[str, str | None]:
    if delivered is not None:  # in the ledger: written to the outbox
        return ("emailed" if delivered or not smtp_configured else "pending"), None
    if not consent:
        return "none", "no consent to reminders"
    if not EMAIL_RE.match((email or "").strip()):
        return "none", "no valid email address"
    return "none", "not sent yet"


def _rows(result, tz, smtp_configured: bool) -> list[Row]:
    rows = []
    for (rank, aid, first, last, phone, email, consent, physio, start, status, bucket, score, source, reason,
         new, no_phone, no_consent, holdout, delivered, calls, spoken, outcome_id, outcome, note, recorded_at,
         recorded_by, _) in result:
        reminder, why = _reminder(delivered, consent, email, smtp_configured)
        latest = None
        if outcome_id is not None:
            latest = LatestCall(outcome, note, _local(recorded_at, tz), recorded_by)
        rows.append(Row(int(rank), int(aid), f"{first or ''} {last or ''}".strip(), phone, physio,
                        _local(start, tz), status, bucket, float(score), source, reason, bool(new),
                        bool(no_phone), bool(no_consent), bool(holdout), reminder, why, int(calls), bool(spoken), latest,
                        None if outcome_id is None else int(outcome_id)))
    return rows


def day_rows(conn, day: dt.date, tz, smtp_configured: bool = False) -> tuple[list[Row], dt.datetime | None]:
    """The rows of ``day``'s list in rank order, and when the list was built (clinic-local)."""
    fetched = conn.execute(DAY_ROWS_SQL, {"day": day}).all()
    built = max((r[-1] for r in fetched), default=None)
    return _rows(fetched, tz, smtp_configured), (_local(built, tz) if built is not None else None)


def some_rows(conn, day: dt.date, tz, appointment_id: int, seen: int = NEWEST,
              smtp_configured: bool = False) -> list[Row]:
    """The row of ``appointment_id`` on ``day``'s list, and every row whose latest outcome is newer
    than ``seen`` (what another receptionist recorded since the page was shown)."""
    return _rows(conn.execute(SOME_ROWS_SQL, {"day": day, "appointment_id": appointment_id, "seen": seen}), tz, smtp_configured)


def progress_of(rows: list[Row]) -> Progress:
    to_call = [r for r in rows if not r.holdout]
    return Progress(len(to_call), sum(1 for r in to_call if r.calls), sum(1 for r in to_call if r.spoken_to),
                    len(rows) - len(to_call))


def day_progress(conn, day: dt.date) -> Progress:
    """The day's progress without reading its rows: one aggregate statement."""
    total, called, spoken, held_out = conn.execute(PROGRESS_SQL, {"day": day}).one()
    return Progress(int(total), int(called), int(spoken), int(held_out))


def seen_marker(rows: list[Row]) -> int:
    """The newest outcome shown by ``rows``: what ``some_rows`` compares with."""
    return max((r.latest_outcome_id or 0 for r in rows), default=0)


def _on_list_or_refuse(conn, day: dt.date, appointment_id: int) -> None:
    p, a = db.priorities, db.appointments
    listed = conn.execute(sa.select(p.c.appointment_id).where(
        p.c.day == day_param(conn, day), p.c.appointment_id == appointment_id)).first()
    if listed:
        return
    other = conn.execute(sa.select(a.c.local_date).where(a.c.appointment_id == appointment_id)).scalar()
    if other is None:
        raise BadInput(404, f"There is no appointment {appointment_id}. Nothing was saved.")
    raise BadInput(404, f"Appointment {appointment_id} is not on the call list of {day.isoformat()} "
                        f"(it is an appointment of {other}). Nothing was saved.")


def history(conn, day: dt.date, appointment_id: int, tz) -> list[dict]:
    """Every call outcome of an appointment on ``day``'s list, newest first, with who recorded it."""
    _on_list_or_refuse(conn, day, appointment_id)
    c, u = db.call_outcomes, db.users
    rows = conn.execute(sa.select(c.c.outcome_id, c.c.outcome, c.c.note, c.c.recorded_at, u.c.name)
                        .select_from(c.outerjoin(u, u.c.user_id == c.c.recorded_by))
                        .where(c.c.appointment_id == appointment_id)
                        .order_by(c.c.outcome_id.desc())).mappings().all()
    return [{"outcome_id": r["outcome_id"], "outcome": r["outcome"], "label": OUTCOME_LABELS[r["outcome"]],
             "note": r["note"], "recorded_at": _local(r["recorded_at"], tz), "recorded_by": r["name"]}
            for r in rows]


class NotAllowed(BadInput):
    """The account was disabled or signed out between the session check and the write."""


# One statement writes the outcome only if the account may still write (not disabled, the
# session's epoch) and the appointment is on the day's list.
RECORD_SQL = sa.text("""INSERT INTO call_outcomes (appointment_id, outcome, note, recorded_at, recorded_by)
SELECT :appointment_id, :outcome, :note, :recorded_at, :user_id
 WHERE EXISTS (SELECT 1 FROM users WHERE user_id = :user_id AND disabled = 0 AND session_epoch = :epoch)
   AND EXISTS (SELECT 1 FROM priorities WHERE day = :day AND appointment_id = :appointment_id)""")


@lru_cache(maxsize=16)
def _driver_sql(statement: sa.TextClause, sqlite: bool) -> str:
    """A statement's text for the DBAPI cursor: sqlite3 takes ``:name``, psycopg ``%(name)s``."""
    text = statement.text
    return text if sqlite else re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", text)


def record_call(engine: sa.Engine, day: dt.date, appointment_id: int, user_id: int, session_epoch: int,
                outcome: str, note: str | None, read_back_since: int | None = None, tz=None,
                smtp_configured: bool = False, on_commit=None) -> tuple[list[Row], Progress] | None:
    """One more row of the appointment's call history, with the user's name, in one transaction.

    The row is written only if the account still may write (not disabled, its session not ended)
    and the appointment is on ``day``'s list; otherwise this raises (NotAllowed, BadInput) and
    nothing is written. Two receptionists recording the same appointment both get their row.
    With ``read_back_since`` (an outcome id) the same transaction then reads the row and every row
    with an outcome newer than that, and the day's progress, and returns them.

    Recording is what reception waits for after each call, so it runs on the pool's DBAPI
    connection (SQLAlchemy's statement handling cost as much as the statements). Its commit is
    not seen by SQLAlchemy's events: ``on_commit`` is called after it, before the connection goes
    back to the pool (the screen drops the list cache there, so no later request reads the
    cache as it was before the commit).
    """
    sqlite = db.is_sqlite(engine)
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    day_value = day.isoformat() if sqlite else day
    result = None
    conn = engine.raw_connection()
    try:
        cursor = conn.cursor()
        if sqlite:
            cursor.execute("BEGIN IMMEDIATE")  # as db.begin_write: the write lock at once
        cursor.execute(_driver_sql(RECORD_SQL, sqlite), {
            "appointment_id": appointment_id, "outcome": outcome, "note": note, "user_id": user_id,
            "recorded_at": now.strftime("%Y-%m-%dT%H:%M:%S+00:00") if sqlite else now,
            "epoch": session_epoch, "day": day_value})
        written = cursor.rowcount == 1
        if written and read_back_since is not None:
            cursor.execute(_driver_sql(SOME_ROWS_SQL, sqlite), {"day": day_value, "appointment_id": appointment_id,
                                                                "seen": read_back_since})
            rows = _rows(cursor.fetchall(), tz, smtp_configured)
            cursor.execute(_driver_sql(PROGRESS_SQL, sqlite), {"day": day_value})
            result = rows, Progress(*(int(x) for x in cursor.fetchone()))
        if written:
            conn.commit()
            if on_commit is not None:
                on_commit()
        else:
            conn.rollback()
        cursor.close()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.close()
    if not written:
        _refuse(engine, day, appointment_id, user_id, session_epoch)
    return result


def _refuse(engine: sa.Engine, day: dt.date, appointment_id: int, user_id: int, session_epoch: int):
    """Why a call was not recorded, as the error to show."""
    u = db.users
    with engine.connect() as conn:
        account = conn.execute(sa.select(u.c.disabled, u.c.session_epoch).where(u.c.user_id == user_id)).first()
        if account is None or account.disabled or account.session_epoch != session_epoch:
            raise NotAllowed(403, "This account may no longer record calls. Nothing was saved.")
        _on_list_or_refuse(conn, day, appointment_id)
    raise AssertionError(f"call outcome for appointment {appointment_id} not written")  # unreachable
