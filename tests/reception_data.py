"""A small hand-made clinic for the reception tests (priorities, reminders, API).

Clinic day D = Monday 2026-03-30 (the day after the switch to summer time: +02:00 in Berlin).
Roster: physios 1 and 2 work Monday to Friday; physio 3 (inactive) has Saturday hours.

Appointments of D (all 'booked' except 105):
  id   patient                 local start  lead   history before D          phone / consent / email / reminders
  101  1 Alice Adler           09:00        10 d   2 completed               ok / yes / yes / yes
  102  2 Bob Brandt (1st visit) 11:00        3 d    none                      none / no / yes / yes
  103  3 Carla Czerny          14:00        15 d   1 completed, 1 no-show    ok / yes / none / yes
  104  4 Dieter Dorn           15:30        30 d   1 completed               '123' / yes / yes / no
  105  5 Eva Ernst             16:00        -      canceled on D             ok / yes / yes / yes
"""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from clinic_lib.core import db

DAY = dt.date(2026, 3, 30)
CREATED = "2025-01-01T09:00:00+00:00"

PATIENTS = [
    dict(patient_id=1, first_name="Alice", last_name="Adler", phone="+49 30 1234567",
         email="alice@example.org", consent_form_received=1, reminder_consent=1),
    dict(patient_id=2, first_name="Bob", last_name="Brandt", phone=None,
         email="bob@example.org", consent_form_received=0, reminder_consent=1),
    dict(patient_id=3, first_name="Carla", last_name="Czerny", phone="+49 151 2222222",
         email=None, consent_form_received=1, reminder_consent=1),
    dict(patient_id=4, first_name="Dieter", last_name="Dorn", phone="123",
         email="dieter@example.org", consent_form_received=1, reminder_consent=0),
    dict(patient_id=5, first_name="Eva", last_name="Ernst", phone="+49 30 7654321",
         email="eva@example.org", consent_form_received=1, reminder_consent=1),
]
PHYSIOS = [dict(physio_id=1, full_name="Anna Berg", active=1), dict(physio_id=2, full_name="Ben Kraus", active=1),
           dict(physio_id=3, full_name="Old Saturday", active=0)]


def _appt(aid, pid, phys, start_utc, booked_utc, status="booked", first=0, local_date=None, minutes=45):
    start = dt.datetime.fromisoformat(start_utc)
    return dict(appointment_id=aid, patient_id=pid, physio_id=phys, appt_start=start_utc,
                appt_end=(start + dt.timedelta(minutes=minutes)).isoformat(), booked_at=booked_utc,
                status=status, canceled_at=("2026-03-29T10:00:00+00:00" if status == "canceled" else None),
                price_estimate_cents=6000, is_first_visit=first, local_date=local_date or "2026-03-30")


APPOINTMENTS = [
    _appt(101, 1, 1, "2026-03-30T07:00:00+00:00", "2026-03-20T07:00:00+00:00"),
    _appt(102, 2, 2, "2026-03-30T09:00:00+00:00", "2026-03-27T09:00:00+00:00", first=1),
    _appt(103, 3, 1, "2026-03-30T12:00:00+00:00", "2026-03-15T12:00:00+00:00"),
    _appt(104, 4, 2, "2026-03-30T13:30:00+00:00", "2026-02-28T13:30:00+00:00"),
    _appt(105, 5, 1, "2026-03-30T14:00:00+00:00", "2026-03-10T14:00:00+00:00", status="canceled"),
    # history
    _appt(201, 1, 1, "2026-02-02T08:00:00+00:00", "2026-01-20T08:00:00+00:00", "completed", 1, "2026-02-02"),
    _appt(202, 1, 1, "2026-02-09T08:00:00+00:00", "2026-01-20T08:00:00+00:00", "completed", 0, "2026-02-09"),
    _appt(203, 3, 2, "2026-02-03T08:00:00+00:00", "2026-01-20T08:00:00+00:00", "completed", 1, "2026-02-03"),
    _appt(204, 3, 2, "2026-02-10T08:00:00+00:00", "2026-01-20T08:00:00+00:00", "no_show", 0, "2026-02-10"),
    _appt(205, 4, 1, "2026-02-04T08:00:00+00:00", "2026-01-20T08:00:00+00:00", "completed", 1, "2026-02-04"),
    # a later day (Tuesday), so the DB is not only D
    _appt(301, 1, 1, "2026-03-31T07:00:00+00:00", "2026-03-20T07:00:00+00:00", local_date="2026-03-31"),
]


def load_clinic(engine: sa.Engine) -> None:
    """Insert the clinic above into a migrated, empty database (one transaction)."""
    with db.begin_write(engine) as conn:
        conn.execute(db.physios.insert(), PHYSIOS)
        hours = [dict(physio_id=p, weekday=w, start_time="08:00", end_time="16:00") for p in (1, 2) for w in range(5)]
        hours.append(dict(physio_id=3, weekday=5, start_time="09:00", end_time="12:00"))
        conn.execute(db.physio_hours.insert(), hours)
        conn.execute(db.patients.insert(), [dict(p, created_at=CREATED) for p in PATIENTS])
        conn.execute(db.appointments.insert(), APPOINTMENTS)


def add_model_scores(engine: sa.Engine, scores: dict[int, tuple[float, str]], day=DAY) -> None:
    with db.begin_write(engine) as conn:
        conn.execute(db.risk_scores.insert(), [
            dict(day=day.isoformat(), appointment_id=aid, risk=r, risk_bucket=b, model_version="test-1",
                 scored_at="2026-03-29T18:00:00+00:00") for aid, (r, b) in scores.items()])


# Reception's accounts for the screen's tests (tests/test_reception_screen.py, the browser test).
PASSWORDS = {"anna": "anna's evening password", "ben": "ben's evening password"}


def add_users(engine: sa.Engine) -> dict[str, int]:
    """The accounts of PASSWORDS; their user ids by name."""
    from clinic_lib.reception.users import add_user
    return {name: add_user(engine, name, password).user_id for name, password in PASSWORDS.items()}
