"""Database validation: planted problems in a database loaded without constraints are found with the
hand-counted numbers, on SQLite and Postgres; a constrained database passes; only validation_runs is written."""
from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from clinic_lib.core import db
from clinic_lib.validation.checks import CATALOGUE
from clinic_lib.validation.database import validate_db

NOW = "2026-03-30T12:00:00+00:00"


def _unconstrained(url: str) -> sa.Engine:
    """The clinic tables with their columns only: no primary keys, CHECKs, foreign keys or triggers."""
    engine = db.make_engine(url)
    md = sa.MetaData()
    for name in db.DATA_TABLES:
        sa.Table(name, md, *[sa.Column(c.name, c.type) for c in db.metadata.tables[name].columns])
    md.create_all(engine)
    db.metadata.create_all(engine, tables=[db.validation_runs])
    return engine


def _appt(i, patient, physio, start, end, status="completed", canceled_at=None, price=6000, first=0,
          booked="2026-03-20T10:00:00+00:00"):
    return dict(appointment_id=i, patient_id=patient, physio_id=physio, appt_start=start, appt_end=end,
                booked_at=booked, status=status, canceled_at=canceled_at, price_estimate_cents=price,
                is_first_visit=first, local_date=start[:10])


def _pay(i, appt, cents, paid, method="card"):
    return dict(payment_id=i, appointment_id=appt, amount_cents=cents, paid_at=paid, paid_date=paid[:10], method=method)


def _plant(engine, with_bad_text: bool = False):
    d = "2026-03-2"
    physios = [dict(physio_id=1, full_name="A", active=1), dict(physio_id=2, full_name="B", active=1),
               dict(physio_id=3, full_name="C", active=5),                                  # flag.invalid
               dict(physio_id=4, full_name="D", active=0)]                                  # has left
    patient = dict(first_name="P", last_name="Q", consent_form_received=1, reminder_consent=1,
                   date_of_birth=None, created_at="2026-01-01T10:00:00+00:00")
    patients = [dict(patient, patient_id=1, phone="+49 151 12345678", email="a@example.org", gender="F"),
                dict(patient, patient_id=1, phone="+49 151 12345678", email="a@example.org", gender="F"),  # id.duplicate x2
                dict(patient, patient_id=2, phone="12", email=None, gender=None),             # phone_invalid
                dict(patient, patient_id=3, phone=None, email="x@", gender=None),             # email_invalid
                dict(patient, patient_id=4, phone=None, email=None, gender="Q"),              # value.choice
                dict(patient, patient_id=5, phone="4.91762E+11", email=None, gender=None)]    # phone_scientific
    hours = [dict(physio_id=1, weekday=w, start_time="08:00", end_time="18:00") for w in range(5)] + \
            [dict(physio_id=9, weekday=0, start_time="08:00", end_time="12:00")]              # orphan.physio
    z = "+00:00"
    appts = [
        _appt(10, 1, 1, f"{d}3T09:00:00{z}", f"{d}3T09:45:00{z}"),
        _appt(11, 2, 1, f"{d}3T09:30:00{z}", f"{d}3T10:00:00{z}"),                            # overlap.physio with 10
        _appt(12, 1, 2, f"{d}3T09:10:00{z}", f"{d}3T09:20:00{z}"),                            # overlap.patient with 10
        _appt(13, 2, 2, f"{d}4T10:00:00{z}", f"{d}4T09:00:00{z}"),                            # time.end_before_start
        _appt(14, 2, 2, f"{d}4T11:00:00{z}", f"{d}4T11:30:00{z}", "booked", booked=f"{d}4T12:00:00{z}"),  # booked_after_start
        _appt(15, 2, 2, f"{d}4T12:00:00{z}", f"{d}4T12:30:00{z}", canceled_at=f"{d}3T10:00:00{z}"),  # canceled_at_not_canceled
        _appt(16, 2, 2, f"{d}4T13:00:00{z}", f"{d}4T13:30:00{z}", "canceled", canceled_at=f"{d}4T13:10:00{z}"),  # canceled_after_start
        _appt(17, 3, 2, f"2026-04-02T09:00:00{z}", f"2026-04-02T09:30:00{z}"),              # outcome_in_future
        _appt(18, 3, 2, f"{d}5T09:00:00{z}", f"{d}5T09:30:00{z}", "done"),                   # status.invalid
        _appt(19, 3, 2, f"{d}5T10:00:00{z}", f"{d}5T10:30:00{z}", first=2),                  # flag.invalid
        _appt(20, 3, 2, f"{d}6T09:00:00{z}", f"{d}6T09:30:00{z}", price=-100),               # price.negative
        _appt(21, 77, 1, f"{d}6T11:00:00{z}", f"{d}6T11:30:00{z}"),                          # orphan.patient
        _appt(22, 3, 8, f"{d}6T13:00:00{z}", f"{d}6T13:30:00{z}"),                           # orphan.physio
        _appt(23, 1, 1, f"2026-04-01T19:00:00{z}", f"2026-04-01T19:30:00{z}", "booked"),    # roster.outside (21:00 local)
        _appt(25, 4, 4, f"2026-04-01T08:00:00{z}", f"2026-04-01T08:30:00{z}", "booked"),    # physio.inactive
        _appt(26, 4, 4, f"{d}3T08:00:00{z}", f"{d}3T08:30:00{z}"),                           # before: fine
    ]
    pays = [
        _pay(100, 10, 6000, f"{d}3T09:50:00{z}"),
        _pay(101, 11, -5, f"{d}3T10:05:00{z}"),                                               # payment.negative
        _pay(102, 16, 6000, f"{d}4T13:40:00{z}"),                                             # payment.not_completed
        _pay(103, 12, 6000, f"{d}3T08:00:00{z}"),                                             # payment.before_appointment
        _pay(104, 13, 50000, f"{d}4T10:30:00{z}"),                                            # payment.too_much
        _pay(105, 15, 6000, f"{d}4T12:40:00{z}"), _pay(106, 15, 6000, f"{d}4T12:40:00{z}"),    # payment.duplicate
        _pay(107, 999, 6000, f"{d}4T12:40:00{z}"),                                            # orphan.appointment
        _pay(108, 19, 6000, f"{d}5T10:40:00{z}", method="bitcoin"),                          # value.choice
    ]
    with db.begin_write(engine) as conn:
        for table, rows in (("physios", physios), ("patients", patients), ("physio_hours", hours),
                            ("appointments", appts), ("payments", pays)):
            conn.execute(db.metadata.tables[table].insert(), rows)
        if with_bad_text:  # another tool's text, past the Instant type's normalisation
            conn.exec_driver_sql(f"INSERT INTO appointments VALUES (24, 1, 1, '{d}6 09:00:00', '{d}6T09:30:00{z}', "
                                 f"'2026-03-20T10:00:00{z}', 'completed', NULL, 6000, 0, '{d}6', NULL)")  # timestamp.format


EXPECTED = {
    "flag.invalid": 2, "patient.phone_invalid": 1, "patient.email_invalid": 1, "value.choice": 2,
    "id.duplicate": 2, "orphan.physio": 2, "orphan.patient": 1, "orphan.appointment": 1,
    "overlap.physio": 1, "overlap.patient": 1, "time.end_before_start": 1, "time.booked_after_start": 1,
    "time.canceled_at_not_canceled": 1, "time.canceled_after_start": 1, "time.outcome_in_future": 1,
    "status.invalid": 1, "price.negative": 1, "roster.outside": 1, "payment.negative": 1,
    "payment.not_completed": 1, "payment.too_much": 1, "payment.before_appointment": 1, "payment.duplicate": 1,
    "physio.inactive": 1, "patient.phone_scientific": 1,
}


def test_planted_problems_are_found(db_url, clinic_env):
    import datetime as dt
    engine = _unconstrained(db_url)
    _plant(engine)
    before = db.content_hash(engine)
    report = validate_db(engine, now=dt.datetime.fromisoformat(NOW))
    found = {c.id: c.count for c in report.failed}
    assert found == EXPECTED, report.summary_text()
    assert report.exit_code == 1 and report.status == "errors"
    ex = report.checks["overlap.physio"].examples[0]
    assert (ex["appointment_id"], ex["other_appointment_id"]) == (10, 11)
    assert report.checks["orphan.patient"].examples[0]["appointment_id"] == 21
    assert report.checks["payment.duplicate"].examples[0]["payment_id"] == 105
    assert report.checks["payment.duplicate"].examples[0]["other_payment_id"] == 106
    assert report.checks["roster.outside"].examples[0]["local_start"] == "21:00"
    assert db.content_hash(engine) == before
    data = json.loads(report.report_path.read_text())
    assert report.report_path.name.startswith("validation_db_") and data["scope"] == "db"
    with engine.connect() as conn:
        runs = conn.execute(sa.select(db.validation_runs)).mappings().all()
    assert [(r["scope"], r["status"], r["n_errors"]) for r in runs] == [("db", "errors", sum(
        n for k, n in EXPECTED.items() if CATALOGUE[k].severity == "error"))]
    engine.dispose()


def test_sqlite_text_instants_not_in_canonical_form(sqlite_url):
    import datetime as dt
    engine = _unconstrained(sqlite_url)
    _plant(engine, with_bad_text=True)
    report = validate_db(engine, now=dt.datetime.fromisoformat(NOW), full=True, record=False)
    assert report.checks["timestamp.format"].count == 1
    assert report.checks["timestamp.format"].examples[0]["appointment_id"] == 24


def test_migrated_database_passes_and_trusts_its_constraints(engine, clinic_env):
    from pathlib import Path

    from clinic_lib.ingest.refresh import load_raw
    corpus = Path(__file__).resolve().parent / "bad_drops"
    load_raw(engine, folder=corpus / "base")
    report = validate_db(engine, record=False)
    assert report.failed == [], report.summary_text()
    assert any("ck_appointments_end_after_start" in n for n in report.notes)
    full = validate_db(engine, record=False, full=True)
    assert full.failed == [] and not full.notes


def test_sqlite_rows_written_around_the_constraints_are_found(sqlite_url):
    """Another tool wrote with PRAGMA foreign_keys=OFF and without the payment trigger."""
    from pathlib import Path

    from clinic_lib.core.migrate import migrate
    from clinic_lib.ingest.refresh import load_raw
    engine = db.make_engine(sqlite_url)
    migrate(engine)
    load_raw(engine, folder=Path(__file__).resolve().parent / "bad_drops" / "base")
    import sqlite3
    raw = sqlite3.connect(str(db.sqlite_file(sqlite_url)))
    raw.execute("PRAGMA foreign_keys = OFF")
    raw.execute("DROP TRIGGER trg_payments_need_completed_insert")
    raw.execute("INSERT INTO appointments VALUES (300, 77, 1, '2026-03-26T08:00:00+00:00', "
                "'2026-03-26T08:30:00+00:00', '2026-03-20T08:00:00+00:00', 'canceled', NULL, 4500, 0, '2026-03-26', NULL)")
    raw.execute("INSERT INTO payments VALUES (700, 300, 4500, '2026-03-26T09:00:00+00:00', '2026-03-26', 'card')")
    raw.commit()
    raw.close()
    report = validate_db(engine, record=False)
    assert {c.id: c.count for c in report.failed} == {"orphan.patient": 1, "payment.not_completed": 1}


def test_validation_refuses_a_database_without_schema(sqlite_url):
    from clinic_lib.core.errors import CannotRun
    with pytest.raises(CannotRun, match="clinic migrate"):
        validate_db(db.make_engine(sqlite_url), record=False)
