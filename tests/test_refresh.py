"""refresh_day: exact replacement of a day, upsert of the rest, idempotence, bad drops lose nothing."""
from __future__ import annotations

import sys
import textwrap

import pytest

from clinic_lib.core import db
from clinic_lib.ingest.drop_format import DropError
from clinic_lib.ingest.refresh import RefreshError, refresh_day

from drops import (
    DAY,
    DAY_APPOINTMENTS,
    HOURS,
    appt,
    kill_when_halfway,
    pay,
    rows,
    write_day_drop,
    write_drop,
    write_table,
)


def last_etl(engine):
    return rows(engine, "SELECT job, day, status, error_message FROM etl_runs ORDER BY run_id DESC LIMIT 1")[0]


def test_refresh_applies_a_day(clinic_env, engine):
    write_day_drop(clinic_env / "data")
    result = refresh_day(DAY, engine=engine)
    assert result.rows_read == 2 + 2 + 4 + 1
    got = rows(engine, "SELECT appointment_id, status, local_date, price_estimate_cents, canceled_at "
                       "FROM appointments ORDER BY appointment_id")
    assert [(r[0], r[1], str(r[2]), r[3]) for r in got] == [
        (1, "completed", DAY, 6000), (2, "no_show", DAY, 6000), (3, "canceled", DAY, 6000),
        (4, "booked", "2026-02-17", 6000)]
    assert got[2][4] is not None and got[0][4] is None
    assert [(r[0], r[1], str(r[2])) for r in rows(engine, "SELECT payment_id, amount_cents, paid_date FROM payments")] == [
        (1, 6000, DAY)]
    # instants are stored in UTC
    start = rows(engine, "SELECT appt_start FROM appointments WHERE appointment_id = 1")[0][0]
    assert str(start).replace(" ", "T").startswith("2026-02-10T08:00:00")
    assert last_etl(engine)[2] == "ok"


def test_refresh_twice_is_identical(clinic_env, engine):
    write_day_drop(clinic_env / "data")
    refresh_day(DAY, engine=engine)
    first = db.content_hash(engine)
    refresh_day(DAY, engine=engine)
    assert db.content_hash(engine) == first
    assert rows(engine, "SELECT COUNT(*) FROM etl_runs WHERE status = 'ok'") == [(2,)]


def test_day_is_replaced_exactly_and_other_rows_upserted(clinic_env, engine):
    data = clinic_env / "data"
    write_day_drop(data)
    refresh_day(DAY, engine=engine)
    # A corrected export of the same day: appointment 2 was entered by mistake (gone), 3 now a
    # no-show, the payment was 55 not 60, and next week's booking (4) is not in it any more.
    corrected = [DAY_APPOINTMENTS[0], {**DAY_APPOINTMENTS[2], "status": "no_show", "canceled_at": ""}]
    write_day_drop(data, appointments=corrected, payments=[pay(1, 1, "55.00", "2026-02-10T09:50:00+01:00")])
    refresh_day(DAY, engine=engine)
    assert rows(engine, "SELECT appointment_id, status FROM appointments ORDER BY appointment_id") == [
        (1, "completed"), (3, "no_show"), (4, "booked")]  # 4 belongs to another day: kept
    assert rows(engine, "SELECT amount_cents FROM payments") == [(5500,)]


def test_future_booking_changed_on_a_later_day_is_upserted(clinic_env, engine):
    data = clinic_env / "data"
    write_day_drop(data)
    refresh_day(DAY, engine=engine)
    cancel = {**DAY_APPOINTMENTS[3], "status": "canceled", "canceled_at": "2026-02-11T12:00:00+01:00"}
    write_day_drop(data, day="2026-02-11", appointments=[cancel], payments=[])
    refresh_day("2026-02-11", engine=engine, allow_empty=True)
    assert rows(engine, "SELECT status FROM appointments WHERE appointment_id = 4") == [("canceled",)]


def test_empty_day_refused_unless_declared(clinic_env, engine):
    write_drop(clinic_env / "data" / "daily" / "2026-02-13", hours=HOURS)  # a Friday, on the roster
    with pytest.raises(DropError, match="no appointments or payments for 2026-02-13, a day on the roster"):
        refresh_day("2026-02-13", engine=engine)
    assert last_etl(engine)[2] == "failed"
    refresh_day("2026-02-13", engine=engine, allow_empty=True)
    assert last_etl(engine)[2] == "ok"


def test_empty_day_off_the_roster_is_accepted(clinic_env, engine):
    write_drop(clinic_env / "data" / "daily" / "2026-02-13", hours=HOURS, appointments=[
        appt(1, "2026-02-13T09:00:00+01:00", "2026-02-13T09:30:00+01:00")])
    refresh_day("2026-02-13", engine=engine)  # now the database knows the Monday-Friday roster
    write_drop(clinic_env / "data" / "daily" / "2026-02-15")  # Sunday: nobody works
    refresh_day("2026-02-15", engine=engine)
    assert last_etl(engine)[2] == "ok"


def _with(rows_, index, **changes):
    out = [dict(r) for r in rows_]
    out[index].update(changes)
    return out


BAD_DROPS = {
    "missing column": (lambda f: write_table(f, "appointments", [
        {k: v for k, v in r.items()} for r in DAY_APPOINTMENTS]).write_text(
        "appointment_id,patient_id,appt_start\n1,1,2026-02-10T09:00:00+01:00\n"),
        r"appointments\.csv: missing column\(s\) physio_id"),
    "unknown status": (lambda f: write_table(f, "appointments", _with(DAY_APPOINTMENTS, 1, status="cancelled")),
                       r"appointments\.csv line 3 column status: expected one of .*'cancelled'"),
    "non-ISO timestamp": (lambda f: write_table(f, "appointments", _with(DAY_APPOINTMENTS, 2, appt_start="10/02/2026 11:00+01:00")),
                          r"appointments\.csv line 4 column appt_start: not an ISO 8601 timestamp"),
    "offset-less timestamp": (lambda f: write_table(f, "appointments", _with(DAY_APPOINTMENTS, 0, booked_at="2026-02-07T09:00:00")),
                              r"appointments\.csv line 2 column booked_at: timestamp has no UTC offset"),
    "duplicate ids": (lambda f: write_table(f, "appointments", _with(DAY_APPOINTMENTS, 2, appointment_id=1)),
                      r"appointments\.csv line 4 column appointment_id: duplicate id"),
    "payment for unknown appointment": (lambda f: write_table(f, "payments", [pay(1, 99, "60.00", "2026-02-10T09:50:00+01:00")]),
                                        r"payments\.csv line 2 column appointment_id: refers to a appointment .*99"),
    "non-UTF-8 bytes": (lambda f: (f / "patients.csv").write_bytes(
        (f / "patients.csv").read_bytes().replace(b"Vogel", b"V\xf6gel")),
        r"patients\.csv line 2: is not UTF-8: byte 0xf6"),
    "empty file": (lambda f: (f / "payments.csv").write_bytes(b""), r"payments\.csv: file is empty"),
    "truncated row": (lambda f: (f / "appointments.csv").write_text(
        (f / "appointments.csv").read_text().rsplit(",", 6)[0] + "\n"),
        r"appointments\.csv line 5: row has fewer fields than the header"),
    "missing file": (lambda f: (f / "payments.csv").unlink(), r"payments\.csv: file is missing"),
    "id beyond 64 bits": (lambda f: write_table(f, "appointments", _with(DAY_APPOINTMENTS, 1, appointment_id="99999999999999999999")),
                          r"appointments\.csv line 3 column appointment_id: expected a whole non-negative number"),
    "infinite amount": (lambda f: write_table(f, "payments", [pay(1, 1, "inf", "2026-02-10T09:50:00+01:00")]),
                        r"payments\.csv line 2 column amount: expected an amount in euros"),
    # pandas alone would take the first column of such rows as an index and shift the data
    "stray comma on every row": (lambda f: (f / "appointments.csv").write_text("\n".join(
        [line + ("," if i else "") for i, line in enumerate((f / "appointments.csv").read_text().splitlines())]) + "\n"),
        r"appointments\.csv line 2: row has more fields than the header"),
}


@pytest.mark.parametrize("case", sorted(BAD_DROPS))
def test_bad_drop_is_refused_and_changes_nothing(clinic_env, engine, case):
    data = clinic_env / "data"
    # the database already holds the previous day
    write_day_drop(data, day="2026-02-09", appointments=[
        appt(10, "2026-02-09T09:00:00+01:00", "2026-02-09T09:30:00+01:00")], payments=[])
    refresh_day("2026-02-09", engine=engine)
    before = db.content_hash(engine)
    folder = write_day_drop(data)
    damage, message = BAD_DROPS[case]
    damage(folder)
    with pytest.raises(DropError, match=message):
        refresh_day(DAY, engine=engine)
    assert db.content_hash(engine) == before
    job, day, status, error = last_etl(engine)
    assert (job, str(day), status) == ("refresh", DAY, "failed")
    assert error and error.split(":")[0] in str(BAD_DROPS[case][1]).replace("\\", "")


def test_missing_folder(clinic_env, engine):
    before = db.content_hash(engine)
    with pytest.raises(DropError, match=r"2026-02-12: folder is missing"):
        refresh_day("2026-02-12", engine=engine)
    assert db.content_hash(engine) == before
    assert last_etl(engine)[2] == "failed"


def test_constraint_refusal_rolls_back_whole_drop(clinic_env, engine):
    """A row the database refuses (payment for a canceled appointment) undoes the whole drop."""
    data = clinic_env / "data"
    before = db.content_hash(engine)
    write_day_drop(data, payments=[pay(1, 3, "60.00", "2026-02-10T12:00:00+01:00")])
    with pytest.raises(RefreshError, match="completed appointment"):
        refresh_day(DAY, engine=engine)
    assert db.content_hash(engine) == before


@pytest.mark.parametrize("day, start, expected_local, expected_utc", [
    # spring forward: 2026-03-29 02:00 CET -> 03:00 CEST
    ("2026-03-29", "2026-03-29T00:30:00+01:00", "2026-03-29", "2026-03-28T23:30:00"),
    ("2026-03-29", "2026-03-29T23:30:00+02:00", "2026-03-29", "2026-03-29T21:30:00"),
    # fall back: 2026-10-25 03:00 CEST -> 02:00 CET; 02:30 happens twice
    ("2026-10-25", "2026-10-25T00:30:00+02:00", "2026-10-25", "2026-10-24T22:30:00"),
    ("2026-10-25", "2026-10-25T02:30:00+02:00", "2026-10-25", "2026-10-25T00:30:00"),
    ("2026-10-25", "2026-10-25T02:30:00+01:00", "2026-10-25", "2026-10-25T01:30:00"),
    ("2026-10-25", "2026-10-25T23:30:00+01:00", "2026-10-25", "2026-10-25T22:30:00"),
])
def test_dst_days_get_local_dates(clinic_env, engine, day, start, expected_local, expected_utc):
    end = start.replace(":30:00", ":59:00")
    write_day_drop(clinic_env / "data", day=day, payments=[], appointments=[
        appt(1, start, end, "booked", booked_at="2026-03-01T09:00:00+01:00")])
    refresh_day(day, engine=engine)
    local, stored = rows(engine, "SELECT local_date, appt_start FROM appointments")[0]
    assert str(local) == expected_local
    assert str(stored).replace(" ", "T").startswith(expected_utc)


def test_dst_day_selected_by_local_date_not_utc_date(clinic_env, engine):
    """00:30 local on the fall-back day is still the previous day in UTC; it belongs to D."""
    write_day_drop(clinic_env / "data", day="2026-10-25", payments=[], appointments=[
        appt(1, "2026-10-25T00:30:00+02:00", "2026-10-25T01:00:00+02:00", "completed"),
        appt(2, "2026-10-24T23:30:00+02:00", "2026-10-24T23:59:00+02:00", "completed")])
    refresh_day("2026-10-25", engine=engine)
    assert rows(engine, "SELECT appointment_id FROM appointments WHERE local_date = '2026-10-25'") == [(1,)]


KILL_SCRIPT = textwrap.dedent("""
    import os, sys, time
    from clinic_lib.ingest import refresh
    real_upsert = refresh.upsert
    def upsert_then_hang(conn, table, frame):
        n = real_upsert(conn, table, frame)
        if table == "appointments":          # halfway: appointments written, payments not yet
            open(sys.argv[2], "w").close()
            time.sleep(600)
        return n
    refresh.upsert = upsert_then_hang
    refresh.refresh_day(sys.argv[1])
""")


def test_sigkill_midway_leaves_database_as_before(clinic_env, monkeypatch, db_url):
    from clinic_lib.core.migrate import migrate
    engine = db.make_engine(db_url)
    migrate(engine)
    data = clinic_env / "data"
    write_day_drop(data, day="2026-02-09", appointments=[
        appt(10, "2026-02-09T09:00:00+01:00", "2026-02-09T09:30:00+01:00")], payments=[])
    refresh_day("2026-02-09", engine=engine)
    before = db.content_hash(engine)
    write_day_drop(data)
    marker = clinic_env / "halfway"
    kill_when_halfway([sys.executable, "-c", KILL_SCRIPT, DAY, str(marker)], marker)
    engine.dispose()
    engine = db.make_engine(db_url)
    assert db.content_hash(engine) == before
    if engine.dialect.name == "sqlite":
        assert rows(engine, "PRAGMA integrity_check") == [("ok",)]
    # and the drop still applies cleanly afterwards
    refresh_day(DAY, engine=engine)
    assert rows(engine, "SELECT COUNT(*) FROM appointments") == [(5,)]


def test_per_day_queries_use_indices(tmp_path):
    from clinic_lib.core.migrate import migrate
    engine = db.make_engine(f"sqlite:///{tmp_path / 'plan.db'}")
    migrate(engine)
    queries = {
        "SELECT * FROM appointments WHERE local_date = '2026-02-10'": "ix_appointments_local_date",
        "SELECT * FROM payments WHERE paid_date = '2026-02-10'": "ix_payments_paid_date",
        "SELECT * FROM payments WHERE appointment_id = 5": "ix_payments_appointment_amount_paid",
        "SELECT * FROM appointments WHERE patient_id = 3 AND appt_start < '2026-02-10'": "ix_appointments_patient_start",
        "SELECT * FROM appointments WHERE physio_id = 3 AND appt_start >= '2026-02-10' "
        "AND appt_start < '2026-02-11'": "ix_appointments_physio_start",
        # the refresh's "has a later drop written this table?" (refresh.newer_in_database): the
        # partial index answers it from its last entry
        "SELECT max(source_day) FROM appointments WHERE source_day IS NOT NULL": "ix_appointments_source_day",
        "SELECT max(source_day) FROM patients WHERE source_day IS NOT NULL": "ix_patients_source_day",
        # validate.py's overlap probe reads start, end and status from the index alone
        "SELECT 1 FROM appointments y WHERE y.physio_id = 3 AND y.status <> 'canceled' "
        "AND y.appt_start >= '2026-02-10' AND y.appt_start < '2026-02-11'": "ix_appointments_physio_start",
    }
    with engine.connect() as conn:
        for query, index in queries.items():
            plan = " ".join(r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + query))
            assert f"INDEX {index} " in plan, (query, plan)
            assert "SCAN" not in plan, (query, plan)
        # read from the index alone: validate.py's overlap probe, the scoring's patient history
        # (features.read_history) and the payment totals
        covering = {
            "SELECT 1 FROM appointments y WHERE y.physio_id = 3 AND y.status <> 'canceled' "
            "AND y.appt_start >= '2026-02-10' AND y.appt_start < '2026-02-11'": "ix_appointments_physio_start",
            "SELECT patient_id, appt_start, appt_end, status, canceled_at FROM appointments "
            "WHERE patient_id IN (3, 4) AND appt_start < '2026-02-10'": "ix_appointments_patient_start",
            "SELECT appointment_id, SUM(amount_cents), MAX(paid_at) FROM payments "
            "WHERE appointment_id IN (5, 6) GROUP BY appointment_id": "ix_payments_appointment_amount_paid",
        }
        for query, index in covering.items():
            plan = " ".join(r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + query))
            assert f"COVERING INDEX {index} " in plan, (query, plan)


def test_sqlite_connections_enforce_fk_wal_busy_timeout(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


def test_reapplying_an_older_drop_keeps_later_states(clinic_env, engine):
    """Day 1 books next week's visit, day 2 cancels it; running day 1 again must not un-cancel it."""
    data = clinic_env / "data"
    write_day_drop(data)  # DAY: appointment 4 booked for 2026-02-17
    refresh_day(DAY, engine=engine)
    cancel = {**DAY_APPOINTMENTS[3], "status": "canceled", "canceled_at": "2026-02-11T12:00:00+01:00"}
    write_day_drop(data, day="2026-02-11", appointments=[cancel], payments=[])
    refresh_day("2026-02-11", engine=engine, allow_empty=True)
    after = db.content_hash(engine)
    refresh_day(DAY, engine=engine)  # the older drop again
    assert rows(engine, "SELECT status FROM appointments WHERE appointment_id = 4") == [("canceled",)]
    assert db.content_hash(engine) == after
