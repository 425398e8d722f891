"""The initial load (``clinic load``): all of data/raw in one transaction, or nothing.

On SQLite the load checks foreign keys and the payment rule once for all rows instead of row by
row (for speed); these tests pin that the rules hold all the same and that the
database's own per-row guards are back after the load, whether it worked or not.
"""
from __future__ import annotations

import sqlite3
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from clinic_lib.core import db
from clinic_lib.core.migrate import migrate
from clinic_lib.ingest import sqlite_ingest
from clinic_lib.ingest.drop_format import DropError
from clinic_lib.ingest.refresh import bulk_insert, first_broken_rule, load_raw

from drops import HOURS, appt, kill_when_halfway, pay, rows, write_drop

RAW_APPOINTMENTS = [
    appt(1, "2026-02-10T09:00:00+01:00", "2026-02-10T09:30:00+01:00"),
    appt(2, "2026-02-10T10:00:00+01:00", "2026-02-10T10:45:00+01:00", status="no_show", patient_id=2),
    appt(3, "2026-03-29T01:30:00+01:00", "2026-03-29T03:30:00+02:00", physio_id=2),  # clocks go forward
    appt(4, "2026-02-11T09:00:00+01:00", "2026-02-11T10:00:00+01:00", status="canceled",
         canceled_at="2026-02-10T18:00:00+01:00"),
]
RAW_PAYMENTS = [pay(1, 1, "60.00", "2026-02-10T09:40:00+01:00"),
                pay(2, 3, "35.50", "2026-03-29T04:00:00+02:00", method="cash")]


def write_raw(folder, appointments=RAW_APPOINTMENTS, payments=RAW_PAYMENTS, hours=HOURS):
    return write_drop(folder, appointments=appointments, payments=payments, hours=hours)


def last_etl(engine):
    return rows(engine, "SELECT job, status, rows_read, rows_written, error_message FROM etl_runs "
                        "ORDER BY run_id DESC LIMIT 1")[0]


def assert_guards_in_place(engine):
    """The per-row rules refuse bad rows after the load (same pooled connection on SQLite)."""
    with pytest.raises(sa.exc.IntegrityError):  # appointment 2 is a no-show: no payment for it
        with db.begin_write(engine) as conn:
            conn.exec_driver_sql("INSERT INTO payments (payment_id, appointment_id, amount_cents, paid_at, "
                                 "paid_date, method) VALUES (90, 2, 100, '2026-02-10T12:00:00+00:00', "
                                 "'2026-02-10', 'card')")
    with pytest.raises(sa.exc.IntegrityError):  # patient 77 does not exist
        with db.begin_write(engine) as conn:
            conn.exec_driver_sql("INSERT INTO appointments (appointment_id, patient_id, physio_id, appt_start, "
                                 "appt_end, booked_at, status, is_first_visit, local_date) VALUES (90, 77, 1, "
                                 "'2026-02-12T08:00:00+00:00', '2026-02-12T09:00:00+00:00', "
                                 "'2026-02-01T08:00:00+00:00', 'booked', 0, '2026-02-12')")


def assert_no_scratch_left(engine):
    """After a load on SQLite: no scratch file beside the database, none attached to the pooled
    connection."""
    database = db.sqlite_file(engine)
    if database is None:
        return
    assert sorted(p.name for p in database.parent.iterdir() if sqlite_ingest.SCRATCH_SUFFIX in p.name) == []
    with engine.connect() as conn:
        attached = [name for _, name, _ in conn.exec_driver_sql("PRAGMA database_list")]
    assert set(attached) <= {"main", "temp"}


def test_load_writes_every_row_with_local_dates(clinic_env, engine):
    raw = write_raw(clinic_env / "raw")
    written = load_raw(engine, folder=raw)
    assert written == 2 + len(HOURS) + 2 + 4 + 2
    assert [(r[0], r[1], str(r[2])) for r in rows(
        engine, "SELECT appointment_id, status, local_date FROM appointments ORDER BY appointment_id")] == [
        (1, "completed", "2026-02-10"), (2, "no_show", "2026-02-10"), (3, "completed", "2026-03-29"),
        (4, "canceled", "2026-02-11")]
    # 01:30 CET is 00:30 UTC; 04:00 CEST is 02:00 UTC, paid on local 2026-03-29
    start = rows(engine, "SELECT appt_start FROM appointments WHERE appointment_id = 3")[0][0]
    assert str(start).replace(" ", "T").startswith("2026-03-29T00:30:00")
    assert [(r[0], r[1], str(r[2])) for r in rows(
        engine, "SELECT payment_id, amount_cents, paid_date FROM payments ORDER BY payment_id")] == [
        (1, 6000, "2026-02-10"), (2, 3550, "2026-03-29")]
    assert last_etl(engine)[:4] == ("load", "ok", 2 + len(HOURS) + 2 + 4 + 2, written)
    assert_guards_in_place(engine)


def test_load_refuses_a_database_with_appointments_unless_replacing(clinic_env, engine):
    load_raw(engine, folder=write_raw(clinic_env / "raw"))
    before = db.content_hash(engine)
    with pytest.raises(DropError, match="already holds 4 appointments.*--replace"):
        load_raw(engine, folder=write_raw(clinic_env / "raw2", appointments=RAW_APPOINTMENTS[:1],
                                          payments=RAW_PAYMENTS[:1]))
    assert db.content_hash(engine) == before
    with db.begin_write(engine) as conn:  # a score derived from the old data: it goes with it
        conn.execute(db.risk_scores.insert().values(day="2026-02-11", appointment_id=4, risk=0.4,
                                                    risk_bucket="medium", model_version="m1",
                                                    scored_at="2026-02-10T18:00:00+00:00"))
    load_raw(engine, folder=clinic_env / "raw2", replace=True)
    assert rows(engine, "SELECT appointment_id FROM appointments") == [(1,)]
    assert rows(engine, "SELECT payment_id FROM payments") == [(1,)]
    assert rows(engine, "SELECT COUNT(*) FROM risk_scores") == [(0,)]


def test_payment_for_an_appointment_not_completed_names_the_line(clinic_env, engine):
    before = db.content_hash(engine)
    bad = RAW_PAYMENTS + [pay(3, 4, "60.00", "2026-02-10T19:00:00+01:00")]  # 4 was canceled
    with pytest.raises(DropError) as caught:
        load_raw(engine, folder=write_raw(clinic_env / "raw", payments=bad))
    assert str(caught.value) == ("payments.csv line 4 column appointment_id: a payment needs a completed "
                                 "appointment; this one's is canceled (value '4')")
    assert db.content_hash(engine) == before
    assert last_etl(engine)[:2] == ("load", "failed")
    assert_guards_in_place(engine)


def test_files_out_of_id_order_load_and_errors_name_the_line_of_the_file(clinic_env, engine):
    """The load writes rows in id order; an error still names the line as the file has it."""
    before = db.content_hash(engine)
    stranger = appt(9, "2026-02-12T09:00:00+01:00", "2026-02-12T09:30:00+01:00", patient_id=77)
    with pytest.raises(DropError, match=r"^appointments\.csv line 2 column patient_id: refers to a patient "):
        load_raw(engine, folder=write_raw(clinic_env / "raw", appointments=[stranger] + RAW_APPOINTMENTS[::-1]))
    for_canceled = pay(3, 4, "60.00", "2026-02-10T19:00:00+01:00")  # 4 was canceled
    with pytest.raises(DropError, match=r"^payments\.csv line 2 column appointment_id: a payment needs"):
        load_raw(engine, folder=write_raw(clinic_env / "raw2", appointments=RAW_APPOINTMENTS[::-1],
                                          payments=[for_canceled] + RAW_PAYMENTS[::-1]))
    assert db.content_hash(engine) == before
    load_raw(engine, folder=write_raw(clinic_env / "raw3", appointments=RAW_APPOINTMENTS[::-1],
                                      payments=RAW_PAYMENTS[::-1]))
    assert rows(engine, "SELECT appointment_id, status FROM appointments ORDER BY appointment_id") == [
        (1, "completed"), (2, "no_show"), (3, "completed"), (4, "canceled")]
    assert rows(engine, "SELECT payment_id, appointment_id FROM payments ORDER BY payment_id") == [(1, 1), (2, 3)]
    assert_no_scratch_left(engine)


def test_refusal_after_the_bulk_insert_began_restores_everything(clinic_env, engine):
    """A row only the database refuses (a roster block listed twice: primary key) fails the load
    after the payment trigger was set aside: the rollback brings the trigger back as well."""
    before = db.content_hash(engine)
    with pytest.raises(Exception, match="physio_hours|UNIQUE|duplicate key"):
        load_raw(engine, folder=write_raw(clinic_env / "raw", hours=HOURS + HOURS[:1]))
    assert db.content_hash(engine) == before
    assert last_etl(engine)[:2] == ("load", "failed")
    assert_no_scratch_left(engine)
    load_raw(engine, folder=write_raw(clinic_env / "raw2"))  # the refusal left nothing in the way
    assert_guards_in_place(engine)
    assert_no_scratch_left(engine)


def test_first_broken_rule_finds_rows_the_bulk_load_let_in(tmp_path, engine):
    """The check that stands in for the per-row rules: it names the table, the row and the rule."""
    load_raw(engine, folder=write_raw(tmp_path / "raw"))
    with engine.connect() as conn:
        assert first_broken_rule(conn) is None
    if not db.is_sqlite(engine):
        pytest.skip("the bulk load sets the per-row rules aside on SQLite only")
    with engine.connect() as conn:  # a connection without the rules, as during the bulk load
        conn.connection.driver_connection.execute("PRAGMA foreign_keys = OFF")
        with conn.begin():
            conn.exec_driver_sql("UPDATE appointments SET patient_id = 55 WHERE appointment_id = 2")
            assert first_broken_rule(conn) == "appointments row appointment_id=2: patient_id 55 is not in patients"
            conn.exec_driver_sql("UPDATE appointments SET patient_id = 2 WHERE appointment_id = 2")
            conn.exec_driver_sql("DROP TRIGGER trg_payments_need_completed_insert")
            conn.exec_driver_sql("INSERT INTO payments VALUES (7, 2, 100, '2026-02-10T12:00:00+00:00', "
                                 "'2026-02-10', 'card')")
            assert first_broken_rule(conn) == ("payments row payment_id=7: a payment needs an existing, "
                                               "completed appointment")
            conn.rollback()
        conn.connection.driver_connection.execute("PRAGMA foreign_keys = ON")


def test_a_load_into_postgres_and_sqlite_gives_the_same_rows(tmp_path, sqlite_url, pg_url):
    raw = write_raw(tmp_path / "raw")
    hashes = []
    for url in (sqlite_url, pg_url):
        engine = db.make_engine(url)
        load_raw(engine, folder=raw)
        hashes.append(db.content_hash(engine))
        engine.dispose()
    assert hashes[0] == hashes[1]


def test_bulk_insert_writes_every_row_in_statements_of_many(engine):
    """1,203 physios: two statements of 500 rows and the remaining 203 one by one, in order."""
    frame = pd.DataFrame({"physio_id": range(1, 1204), "full_name": [f"Physio {i}" for i in range(1, 1204)],
                          "active": [i % 2 for i in range(1, 1204)], "source_day": None})
    with db.begin_write(engine) as conn:
        assert bulk_insert(conn, "physios", frame) == 1203
    got = rows(engine, "SELECT physio_id, full_name, active, source_day FROM physios ORDER BY physio_id")
    assert got == [(i, f"Physio {i}", i % 2, None) for i in range(1, 1204)]


# --- SQLite: rows through scratch files ---------------------------------------------------------

def test_insert_frames_writes_what_bulk_insert_writes_value_for_value(tmp_path):
    """The scratch-file path and the row-by-row path store the same values with the same SQLite
    types: whole numbers, NULL numbers, text with quotes and non-ASCII, NULL text; columns the
    frames lack (source_day) stay NULL."""
    frames = {
        "physios": pd.DataFrame({"physio_id": pd.array([1, 2], dtype="Int64"),
                                 "full_name": ["Jörg O'Neill", "Ana, \"Ani\""], "active": [1, 0]}),
        "patients": pd.DataFrame({
            "patient_id": pd.array([5, 2**40], dtype="Int64"), "first_name": ["Zoë", "Li"],
            "last_name": ["Ünal", "Wu"], "phone": [None, "+49 30 1234567"], "email": ["z@example.org", None],
            "consent_form_received": [1, 0], "reminder_consent": [0, 1], "date_of_birth": ["1980-02-29", None],
            "gender": [None, "X"], "created_at": ["2026-01-01T08:00:00+00:00"] * 2}),
        "appointments": pd.DataFrame({
            "appointment_id": pd.array([10, 11], dtype="Int64"), "patient_id": pd.array([5, 2**40], dtype="Int64"),
            "physio_id": pd.array([1, None], dtype="Int64"),
            "appt_start": ["2026-03-29T00:30:00+00:00", "2026-03-30T07:00:00+00:00"],
            "appt_end": ["2026-03-29T01:30:00+00:00", "2026-03-30T07:45:00+00:00"],
            "booked_at": ["2026-03-01T10:00:00+00:00"] * 2, "status": ["canceled", "booked"],
            "canceled_at": ["2026-03-28T09:00:00+00:00", None],
            "price_estimate_cents": pd.array([None, 6500], dtype="Int64"),
            "is_first_visit": [1, 0], "local_date": ["2026-03-29", "2026-03-30"]}),
    }
    stored = []
    for name, through_scratch in (("scratch.db", True), ("rows.db", False)):
        engine = db.make_engine(f"sqlite:///{tmp_path / name}")
        migrate(engine)
        with db.begin_bulk_write(engine) as conn:
            if through_scratch:
                # a frame may come as the function that makes it (called on the writer thread)
                given = {table: (lambda frame=frame: frame) if table == "appointments" else frame
                         for table, frame in frames.items()}
                indexed = []
                written = sqlite_ingest.insert_frames(conn, given, after_each=indexed.append)
                assert indexed == list(frames)  # after each table, in the order given
                assert {t: len(f) for t, f in written.items()} == {"physios": 2, "patients": 2, "appointments": 2}
            else:
                for table, frame in frames.items():
                    bulk_insert(conn, table, frame.assign(source_day=None))  # every table here has one
        with engine.connect() as conn:
            stored.append({table: conn.exec_driver_sql(
                f"SELECT * FROM {table} ORDER BY rowid").all() for table in frames}
                | {f"{table} types": conn.exec_driver_sql(
                    f"SELECT {', '.join(f'typeof({c})' for c in frame.columns)} FROM {table} ORDER BY rowid").all()
                   for table, frame in frames.items()})
        assert_no_scratch_left(engine)
        engine.dispose()
    assert stored[0] == stored[1]
    assert stored[0]["appointments types"][1][2] == "null" and stored[0]["patients types"][1][0] == "integer"
    assert stored[0]["appointments"][0][-1] is None  # source_day


def test_insert_frames_runs_only_inside_a_bulk_write(tmp_path, sqlite_url):
    """begin_bulk_write owns the scratch files (it detaches and deletes them when its transaction
    ends): elsewhere insert_frames refuses before writing any."""
    engine = db.make_engine(sqlite_url)
    migrate(engine)
    physios = pd.DataFrame({"physio_id": pd.array([1], dtype="Int64"), "full_name": ["Anna"], "active": [1]})
    with db.begin_write(engine) as conn, pytest.raises(ValueError, match="inside db.begin_bulk_write"):
        sqlite_ingest.insert_frames(conn, {"physios": physios})
    assert_no_scratch_left(engine)
    with db.begin_bulk_write(engine, check_foreign_keys=True) as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        sqlite_ingest.insert_frames(conn, {"physios": physios})
        assert sqlite_ingest.scratch_file(db.sqlite_file(engine), "physios").exists()
    assert rows(engine, "SELECT physio_id, full_name FROM physios") == [(1, "Anna")]
    assert_no_scratch_left(engine)
    engine.dispose()


def test_sqlite_load_replaces_scratch_files_a_killed_load_left(tmp_path, sqlite_url):
    engine = db.make_engine(sqlite_url)
    database = db.sqlite_file(engine)
    for table in ("appointments", "payments"):
        sqlite_ingest.scratch_file(database, table).write_bytes(b"half a file from a killed load")
    load_raw(engine, folder=write_raw(tmp_path / "raw"))
    assert rows(engine, "SELECT COUNT(*) FROM appointments") == [(4,)]
    assert_no_scratch_left(engine)


def test_a_refused_load_leaves_the_scratch_files_of_the_load_it_waited_for(tmp_path, sqlite_url):
    """Only a load that holds the write lock writes or removes scratch files: one refused before
    (here: the database already holds appointments) must not delete those of a load in progress."""
    engine = db.make_engine(sqlite_url)
    load_raw(engine, folder=write_raw(tmp_path / "raw"))
    in_progress = sqlite_ingest.scratch_file(db.sqlite_file(engine), "appointments")
    in_progress.write_bytes(b"another load's rows")
    with pytest.raises(DropError, match="already holds 4 appointments"):
        load_raw(engine, folder=write_raw(tmp_path / "raw2"))
    assert in_progress.read_bytes() == b"another load's rows"


# --- SQLite: the load's rollback journal ------------------------------------------------------

def journal_modes_seen_while_inserting(monkeypatch) -> list[str]:
    """Records the journal mode of the loading connection when it inserts the rows."""
    seen, real = [], sqlite_ingest.insert_frames

    def recording(conn, frames, **kwargs):
        seen.append(conn.exec_driver_sql("PRAGMA journal_mode").scalar())
        return real(conn, frames, **kwargs)
    monkeypatch.setattr(sqlite_ingest, "insert_frames", recording)
    return seen


def test_sqlite_load_alone_uses_a_rollback_journal_then_wal_again(tmp_path, sqlite_url, monkeypatch):
    engine = db.make_engine(sqlite_url)
    seen = journal_modes_seen_while_inserting(monkeypatch)
    load_raw(engine, folder=write_raw(tmp_path / "raw"))
    assert set(seen) == {"delete"}
    path = str(db.sqlite_file(sqlite_url))
    plain = sqlite3.connect(path)  # no pragmas of ours: what the file itself says
    assert plain.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    plain.close()
    with engine.connect() as conn:  # the pooled connection has its usual settings back
        settings = [conn.exec_driver_sql(f"PRAGMA {p}").scalar()
                    for p in ("foreign_keys", "synchronous", "busy_timeout", "threads")]
    assert settings == [1, 1, db.BUSY_TIMEOUT_MS, 0]  # synchronous 1 = NORMAL
    assert not Path(path + "-journal").exists()
    assert_guards_in_place(engine)


def test_sqlite_load_beside_another_connection_stays_in_wal_without_waiting(tmp_path, sqlite_url,
                                                                            monkeypatch):
    """SQLite refuses to leave WAL while another connection has the file open: the load then
    goes through the WAL as before, at once (it does not wait out the 30 s busy timeout)."""
    engine = db.make_engine(sqlite_url)
    migrate(engine)
    reader = sqlite3.connect(str(db.sqlite_file(sqlite_url)), isolation_level=None)  # e.g. the
    assert reader.execute("SELECT COUNT(*) FROM appointments").fetchone() == (0,)    # dashboard, idle
    seen = journal_modes_seen_while_inserting(monkeypatch)
    t0 = time.monotonic()
    load_raw(engine, folder=write_raw(tmp_path / "raw"))
    assert time.monotonic() - t0 < db.BUSY_TIMEOUT_MS / 1000 / 2
    assert set(seen) == {"wal"}
    assert reader.execute("SELECT COUNT(*) FROM appointments").fetchone() == (4,)
    reader.close()


LOAD_KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from clinic_lib.core import db
    from clinic_lib.ingest import refresh
    from clinic_lib.ingest import sqlite_ingest
    real_insert = sqlite_ingest.insert_frames
    def insert_then_hang(conn, frames, **kwargs):
        n = real_insert(conn, frames, **kwargs)
        # halfway: every row written and indexed, nothing checked or committed
        halfway = Path(sys.argv[2])  # written aside, then renamed: never seen empty
        halfway.with_suffix(".tmp").write_text(conn.exec_driver_sql("PRAGMA journal_mode").scalar())
        halfway.with_suffix(".tmp").rename(halfway)
        time.sleep(600)
        return n
    sqlite_ingest.insert_frames = insert_then_hang
    refresh.load_raw(db.make_engine(sys.argv[3]), folder=sys.argv[1])
""")


def test_sqlite_load_killed_midway_leaves_the_database_as_before(tmp_path, sqlite_url):
    """SIGKILL while the rows are half written through the rollback journal: the next connection
    rolls the hot journal back, and the database is as before, in WAL, ready for the load."""
    engine = db.make_engine(sqlite_url)
    migrate(engine)
    before = db.content_hash(engine)
    engine.dispose()
    raw, marker = write_raw(tmp_path / "raw"), tmp_path / "halfway"
    kill_when_halfway([sys.executable, "-c", LOAD_KILL_SCRIPT, str(raw), str(marker), sqlite_url], marker)
    assert marker.read_text() == "delete"
    path = str(db.sqlite_file(sqlite_url))
    assert Path(path + "-journal").exists()  # the hot journal of the killed transaction
    assert Path(path + ".load-scratch-appointments").exists()  # left behind; the next load removes it
    engine = db.make_engine(sqlite_url)
    assert db.content_hash(engine) == before
    assert rows(engine, "PRAGMA integrity_check") == [("ok",)]
    assert rows(engine, "PRAGMA journal_mode") == [("wal",)]
    assert load_raw(engine, folder=raw) == 2 + len(HOURS) + 2 + 4 + 2
    assert_no_scratch_left(engine)
