"""Migrations: versioned and idempotent; the reference project's layout upgrades in one transaction."""
from __future__ import annotations

import subprocess
import sys

import pytest
import sqlalchemy as sa

from clinic_lib.core import db
from clinic_lib.core.migrate import CURRENT_VERSION, MIGRATIONS, MigrationError, migrate

ALL_VERSIONS = [version for version, _, _ in MIGRATIONS]

# The public reference project's layout (clinic-ops-automation): ISO text timestamps, REAL money,
# no constraints beyond primary keys.
REFERENCE_DDL = [
    "CREATE TABLE patients (patient_id INTEGER PRIMARY KEY, first_name TEXT, last_name TEXT, "
    "phone TEXT, consent_form_received INTEGER, created_at TEXT)",
    "CREATE TABLE physios (physio_id INTEGER PRIMARY KEY, full_name TEXT)",
    "CREATE TABLE appointments (appointment_id INTEGER PRIMARY KEY, patient_id INTEGER, physio_id INTEGER, "
    "appt_start TEXT, appt_end TEXT, booked_at TEXT, status TEXT, price_estimate REAL)",
    "CREATE TABLE payments (payment_id INTEGER PRIMARY KEY, appointment_id INTEGER, amount REAL, "
    "paid_at TEXT, method TEXT)",
    "CREATE TABLE etl_runs (id INTEGER PRIMARY KEY, job TEXT, target_date TEXT, ran_at TEXT)",
]
REFERENCE_ROWS = [
    "INSERT INTO patients VALUES (1, 'Lena', 'Vogel', '+4915112345678', 1, '2025-08-01T10:00:00+02:00')",
    "INSERT INTO patients VALUES (2, 'Max', 'Huber', NULL, 0, '2025-08-02T10:00:00+02:00')",
    "INSERT INTO physios VALUES (1, 'Anna Berg')",
    "INSERT INTO appointments VALUES (1, 1, 1, '2025-08-14T11:00:00+02:00', '2025-08-14T11:45:00+02:00', "
    "'2025-07-17T11:00:00+02:00', 'completed', 90.0)",
    "INSERT INTO appointments VALUES (2, 1, 1, '2025-08-21T11:00:00+02:00', '2025-08-21T11:45:00+02:00', "
    "'2025-08-14T12:00:00+02:00', 'no_show', 60.5)",
    "INSERT INTO appointments VALUES (3, 2, 1, '2025-10-26T00:30:00+02:00', '2025-10-26T01:00:00+02:00', "
    "'2025-10-20T12:00:00+02:00', 'booked', 75.0)",
    "INSERT INTO payments VALUES (1, 1, 90.0, '2025-08-14T11:50:00+02:00', 'card')",
    "INSERT INTO etl_runs VALUES (1, 'refresh_daily', '2025-08-14', '2025-08-14T22:00:00+02:00')",
]


def make_reference_db(url: str, extra_rows=()) -> sa.Engine:
    engine = db.make_engine(url)
    with engine.begin() as conn:
        for statement in REFERENCE_DDL + REFERENCE_ROWS + list(extra_rows):
            conn.exec_driver_sql(statement.replace("INTEGER PRIMARY KEY", "BIGINT PRIMARY KEY")
                                 if engine.dialect.name != "sqlite" else statement)
    return engine


def table_dump(engine) -> dict:
    with engine.connect() as conn:
        names = sa.inspect(conn).get_table_names()
        return {n: sorted(map(tuple, conn.exec_driver_sql(f"SELECT * FROM {n}"))) for n in names}


def test_empty_database_gets_current_schema_once(db_url):
    engine = db.make_engine(db_url)
    assert migrate(engine) == ALL_VERSIONS
    assert migrate(engine) == []
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT MAX(version) FROM schema_version").scalar() == CURRENT_VERSION
        tables = set(sa.inspect(conn).get_table_names())
    assert {"patients", "physios", "physio_hours", "appointments", "payments", "etl_runs"} <= tables


def test_reference_layout_is_upgraded(db_url, monkeypatch):
    monkeypatch.setenv("CLINIC_TZ", "Europe/Berlin")
    engine = make_reference_db(db_url)
    assert migrate(engine) == ALL_VERSIONS
    with engine.connect() as conn:
        appts = conn.execute(sa.select(
            db.appointments.c.appointment_id, db.appointments.c.appt_start, db.appointments.c.local_date,
            db.appointments.c.price_estimate_cents, db.appointments.c.is_first_visit,
            db.appointments.c.status).order_by(db.appointments.c.appointment_id)).all()
        assert [tuple(a) for a in appts] == [
            (1, "2025-08-14T09:00:00+00:00", "2025-08-14", 9000, 1, "completed"),
            (2, "2025-08-21T09:00:00+00:00", "2025-08-21", 6050, 0, "no_show"),
            # 00:30 local on the night the clocks go back is still the 26th locally, the 25th in UTC
            (3, "2025-10-25T22:30:00+00:00", "2025-10-26", 7500, 1, "booked")]
        pays = conn.execute(sa.select(db.payments.c.amount_cents, db.payments.c.paid_date)).all()
        assert [tuple(p) for p in pays] == [(9000, "2025-08-14")]
        runs = conn.execute(sa.select(db.etl_runs.c.job, db.etl_runs.c.day, db.etl_runs.c.status)).all()
        assert [tuple(r) for r in runs] == [("refresh_daily", "2025-08-14", "ok")]
        assert not [t for t in sa.inspect(conn).get_table_names() if t.startswith("legacy_")]
    # the new constraints now hold
    with pytest.raises(sa.exc.IntegrityError):
        with db.begin_write(engine) as conn:
            conn.exec_driver_sql("UPDATE appointments SET status = 'cancelled' WHERE appointment_id = 2")
    assert migrate(engine) == []


@pytest.mark.parametrize("bad_row, message", [
    ("INSERT INTO appointments VALUES (7, 1, 1, '2025-08-15T11:00:00+02:00', '2025-08-15T10:00:00+02:00', "
     "'2025-08-01T11:00:00+02:00', 'completed', 60)", "appointments row appointment_id=7 breaks the rule 'appt_end > appt_start'"),
    ("INSERT INTO appointments VALUES (8, 1, 1, '2025-08-15T11:00:00+02:00', '2025-08-15T12:00:00+02:00', "
     "'2025-08-01T11:00:00+02:00', 'cancelled', 60)", "appointments row appointment_id=8 breaks the rule 'status IN"),
    ("INSERT INTO payments VALUES (9, 2, 60.5, '2025-08-21T12:00:00+02:00', 'card')",
     "payments row payment_id=9 breaks the rule 'a payment needs an existing, completed appointment'"),
    ("INSERT INTO payments VALUES (10, 1, -5, '2025-08-21T12:00:00+02:00', 'card')",
     "payments row payment_id=10 breaks the rule 'amount >= 0'"),
    ("INSERT INTO appointments VALUES (11, 99, 1, '2025-08-15T11:00:00+02:00', '2025-08-15T12:00:00+02:00', "
     "'2025-08-01T11:00:00+02:00', 'completed', 60)", "appointments row appointment_id=11 breaks the rule 'patient_id references patients'"),
    ("INSERT INTO appointments VALUES (12, 1, 1, '2025-08-15 11:00', '2025-08-15T12:00:00+02:00', "
     "'2025-08-01T11:00:00+02:00', 'completed', 60)", "appointments row appointment_id=12 breaks the rule 'appt_start is an ISO 8601 timestamp with offset'"),
])
def test_reference_row_breaking_a_rule_changes_nothing(db_url, bad_row, message):
    engine = make_reference_db(db_url, [bad_row])
    before = table_dump(engine)
    with pytest.raises(MigrationError) as info:
        migrate(engine)
    assert message in str(info.value)
    assert "nothing was changed" in str(info.value)
    assert table_dump(engine) == before


def test_clinic_migrate_command(tmp_path):
    url = f"sqlite:///{tmp_path / 'ref.db'}"
    make_reference_db(url).dispose()
    env = {"DATABASE_URL": url, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "clinic_lib", "migrate"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"applied migrations {ALL_VERSIONS}" in out.stdout
    out = subprocess.run([sys.executable, "-m", "clinic_lib", "migrate"], env=env, capture_output=True, text=True)
    assert f"already at schema version {CURRENT_VERSION}" in out.stdout


def test_version_1_database_gains_source_day(tmp_path):
    """A database made by the first release (no source_day, no validation indices) is brought up."""
    url = f"sqlite:///{tmp_path / 'v1.db'}"
    engine = db.make_engine(url)
    with db.begin_write(engine) as conn:
        conn.exec_driver_sql("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)")
        conn.exec_driver_sql("INSERT INTO schema_version VALUES (1, 'initial', '2026-11-01T00:00:00+00:00')")
        for table in db.metadata.sorted_tables:
            columns = ", ".join(f"{c.name}" for c in table.columns if c.name != "source_day")
            conn.exec_driver_sql(f"CREATE TABLE {table.name} ({columns})")
        conn.exec_driver_sql("INSERT INTO appointments (appointment_id, local_date) VALUES (1, '2026-02-10')")
    assert migrate(engine) == ALL_VERSIONS[1:]
    with engine.connect() as conn:
        assert {c["name"] for c in sa.inspect(conn).get_columns("appointments")} >= {"source_day"}
        assert index_definitions(conn)["ix_appointments_physio_start"][0] == [
            "physio_id", "appt_start", "appt_end", "status"]
        assert conn.exec_driver_sql("SELECT appointment_id, source_day FROM appointments").all() == [(1, None)]


def index_definitions(conn) -> dict[str, tuple[list[str], bool]]:
    """Index name -> (columns, partial?) for the clinic's tables."""
    out = {}
    for table in ("patients", "physios", "appointments", "payments"):
        for ix in sa.inspect(conn).get_indexes(table):
            out[ix["name"]] = (ix["column_names"], None)
    if conn.dialect.name == "sqlite":
        rows = conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
    else:
        rows = conn.exec_driver_sql("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()")
    for name, sql in rows:
        if name in out:
            out[name] = (out[name][0], " WHERE " in sql.upper())
    return out


VERSION_2_INDICES = {  # name -> (table, columns, WHERE or None), as version 2 made them
    "ix_payments_appointment": ("payments", "appointment_id", None),
    "ix_appointments_patient_start": ("appointments", "patient_id, appt_start", None),
    "ix_appointments_physio_start": ("appointments", "physio_id, appt_start", None),
    "ix_appointments_patient_busy": ("appointments", "patient_id, appt_start, appt_end", "status <> 'canceled'"),
    "ix_appointments_physio_busy": ("appointments", "physio_id, appt_start, appt_end", "status <> 'canceled'"),
    "ix_appointments_source_day": ("appointments", "source_day", None),
    "ix_patients_source_day": ("patients", "source_day", None),
    "ix_physios_source_day": ("physios", "source_day", None),
}


def test_version_2_indices_become_the_current_ones(db_url):
    """Version 3 replaces version 2's eleven indices with eight, keeps the rows, and runs once."""
    import kpi_fixture as fx
    engine = db.make_engine(db_url)
    migrate(engine)
    fx.load(engine)
    with db.begin_write(engine) as conn:  # put the database back into version 2's shape
        for name, (table, columns, where) in VERSION_2_INDICES.items():
            conn.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")
            conn.exec_driver_sql(f"CREATE INDEX {name} ON {table} ({columns})" + (f" WHERE {where}" if where else ""))
        conn.exec_driver_sql("DELETE FROM schema_version WHERE version >= 3")
    before = table_dump(engine)
    assert migrate(engine) == [v for v in ALL_VERSIONS if v >= 3]
    assert migrate(engine) == []
    with engine.connect() as conn:
        indices = index_definitions(conn)
    assert {name: indices[name] for name in indices if name in VERSION_2_INDICES or "_amount_paid" in name} == {
        "ix_appointments_patient_start": (["patient_id", "appt_start", "appt_end", "status", "canceled_at"], False),
        "ix_appointments_physio_start": (["physio_id", "appt_start", "appt_end", "status"], False),
        "ix_appointments_source_day": (["source_day"], True),
        "ix_patients_source_day": (["source_day"], True),
        "ix_physios_source_day": (["source_day"], True),
        "ix_payments_appointment_amount_paid": (["appointment_id", "amount_cents", "paid_at"], False),
    }
    after = table_dump(engine)
    assert {t: rows for t, rows in after.items() if t != "schema_version"} == \
        {t: rows for t, rows in before.items() if t != "schema_version"}


# call_outcomes as versions 1 to 4 made it: no recorded_by, no users table
VERSION_3_CALL_OUTCOMES = sa.Table(
    "call_outcomes", sa.MetaData(),
    sa.Column("outcome_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("appointment_id", db.Id, nullable=False),
    sa.Column("outcome", sa.String(12), nullable=False),
    sa.Column("note", sa.Text),
    sa.Column("recorded_at", db.Instant, nullable=False),
    sa.Index("ix_call_outcomes_appointment", "appointment_id", "outcome_id"),
)


def make_version_3_db(engine) -> None:
    """A database as version 3 left it, with two call outcomes recorded through the API."""
    import reception_data
    with db.begin_write(engine) as conn:
        for table in db.metadata.sorted_tables:
            if table.name not in ("users", "call_outcomes"):
                table.create(conn)
        VERSION_3_CALL_OUTCOMES.create(conn)
        from clinic_lib.core.migrate import schema_version
        schema_version.create(conn)
        conn.execute(schema_version.insert(), [{"version": v, "description": f"version {v}",
                                                "applied_at": "2026-11-01T00:00:00+00:00"} for v in (1, 2, 3)])
    reception_data.load_clinic(engine)
    with db.begin_write(engine) as conn:
        conn.execute(VERSION_3_CALL_OUTCOMES.insert(), [
            {"appointment_id": 101, "outcome": "voicemail", "note": "left a message",
             "recorded_at": "2026-03-29T17:00:00+00:00"},
            {"appointment_id": 101, "outcome": "confirmed", "note": None,
             "recorded_at": "2026-03-29T17:30:00+00:00"}])


def test_version_3_database_gains_users_and_who_recorded_each_call(db_url):
    """Migration 5 adds the accounts and call_outcomes.recorded_by to a version-3 database with
    call outcomes in it: the outcomes stay, without a name; new ones can carry one."""
    engine = db.make_engine(db_url)
    make_version_3_db(engine)
    before = table_dump(engine)
    assert migrate(engine) == [v for v in ALL_VERSIONS if v > 3]
    assert migrate(engine) == []
    after = table_dump(engine)
    assert after["users"] == []
    assert [row[:5] + row[5:] for row in after["call_outcomes"]] == \
        [row + (None,) for row in before["call_outcomes"]]  # the old rows, recorded_by NULL
    unchanged = ("schema_version", "users", "call_outcomes", "physio_hours")
    assert {t: rows for t, rows in after.items() if t not in unchanged} == \
        {t: rows for t, rows in before.items() if t not in unchanged}
    # migration 4: the inactive physio 3 has no appointment, so its Saturday block ends the day
    # before the data's first (2026-02-02); the others stay open-ended
    ended = [(3, 5, "09:00", "12:00", None, "2026-02-01")]
    assert [r[:4] + (r[4], r[5] and str(r[5])) for r in after["physio_hours"]] == \
        [r for r in before["physio_hours"] if r[0] != 3] + ended
    from clinic_lib.reception import users
    anna = users.add_user(engine, "anna", "anna's evening password")
    with db.begin_write(engine) as conn:
        conn.execute(db.call_outcomes.insert().values(appointment_id=102, outcome="reached",
                                                      recorded_at="2026-03-29T18:00:00+00:00", recorded_by=anna.user_id))
    with pytest.raises(sa.exc.IntegrityError):  # the new column refers to an account
        with db.begin_write(engine) as conn:
            conn.execute(db.call_outcomes.insert().values(appointment_id=102, outcome="reached",
                                                          recorded_at="2026-03-29T18:00:00+00:00", recorded_by=999))
    with engine.connect() as conn:
        names = conn.execute(sa.select(db.call_outcomes.c.outcome_id, db.users.c.name).select_from(
            db.call_outcomes.outerjoin(db.users, db.users.c.user_id == db.call_outcomes.c.recorded_by))
            .order_by(db.call_outcomes.c.outcome_id)).all()
    assert [tuple(n) for n in names] == [(1, None), (2, None), (3, "anna")]
    engine.dispose()


def test_a_migration_with_a_lower_number_still_runs_after_a_higher_one(db_url, monkeypatch):
    """Numbers are reserved per change: a database that has every version but one gains that one
    when it arrives, although its number is lower than the highest applied."""
    import clinic_lib.core.migrate as m
    engine = db.make_engine(db_url)
    late = ALL_VERSIONS[-2]
    monkeypatch.setattr(m, "MIGRATIONS", [x for x in MIGRATIONS if x[0] != late])
    assert migrate(engine) == [v for v in ALL_VERSIONS if v != late]
    monkeypatch.setattr(m, "MIGRATIONS", MIGRATIONS)
    m.ensure_schema(engine)
    assert migrate(engine) == []
    with engine.connect() as conn:
        assert m.applied_versions(conn) == set(ALL_VERSIONS)
    engine.dispose()


def test_version_3_database_gains_monitoring_and_the_holdout_flag(db_url):
    """Migration 7 adds the model_monitoring table and priorities.holdout (0 for the rows there)."""
    engine = db.make_engine(db_url)
    migrate(engine)
    old = sa.MetaData()
    old_priorities = sa.Table(  # the callback list as versions 1-3 made it
        "priorities", old,
        *[sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
          for c in db.priorities.columns if c.name != "holdout"])
    with db.begin_write(engine) as conn:
        conn.exec_driver_sql("DROP TABLE priorities")
        conn.exec_driver_sql("DROP TABLE model_monitoring")
        old_priorities.create(conn)
        conn.execute(old_priorities.insert().values(
            day="2026-03-30", appointment_id=101, rank=1,
            patient_id=1, is_new_patient=0, missing_phone=0, missing_consent=0, risk_score=0.4,
            risk_bucket="high", risk_source="model", priority_score=0.4, priority_reason="high risk 0.40",
            built_at="2026-03-29T18:00:00+00:00"))
        conn.exec_driver_sql("DELETE FROM schema_version WHERE version > 3")
    assert migrate(engine) == [v for v in ALL_VERSIONS if v > 3]
    assert migrate(engine) == []
    with engine.connect() as conn:
        assert "model_monitoring" in sa.inspect(conn).get_table_names()
        assert conn.exec_driver_sql("SELECT appointment_id, holdout FROM priorities").all() == [(101, 0)]
    with pytest.raises(sa.exc.IntegrityError):  # a flag: 0 or 1
        with db.begin_write(engine) as conn:
            conn.exec_driver_sql("UPDATE priorities SET holdout = 2")


# physio_hours as versions 1 to 3 made it: a weekly roster without history, keyed by its block
VERSION_3_PHYSIO_HOURS = sa.Table(
    "physio_hours", sa.MetaData(),
    sa.Column("physio_id", db.Id, primary_key=True),
    sa.Column("weekday", sa.SmallInteger, primary_key=True),
    sa.Column("start_time", sa.String(5), primary_key=True),
    sa.Column("end_time", sa.String(5), nullable=False),
)


def test_roster_history_arrives_after_versions_5_and_7(db_url):
    """Migration 4 (roster history) reaches a database that already has 5 and 7: its blocks stay,
    open-ended, except the blocks of a physio who has left, which end on the day of their last
    appointment; afterwards a block may hold twice over different days."""
    from clinic_lib.core.migrate import applied_versions

    import reception_data
    engine = db.make_engine(db_url)
    migrate(engine)
    reception_data.load_clinic(engine)
    with db.begin_write(engine) as conn:  # put physio_hours back into version 3's shape
        rows = [tuple(r) for r in conn.exec_driver_sql(
            "SELECT physio_id, weekday, start_time, end_time FROM physio_hours ORDER BY 1, 2, 3")]
        conn.exec_driver_sql("DROP TABLE physio_hours")
        VERSION_3_PHYSIO_HOURS.create(conn)
        conn.execute(VERSION_3_PHYSIO_HOURS.insert(), [dict(zip(("physio_id", "weekday", "start_time", "end_time"), r))
                                                        for r in rows])
        # physio 2 left after a last appointment on 2026-02-10
        conn.exec_driver_sql("UPDATE physios SET active = 0 WHERE physio_id = 2")
        conn.exec_driver_sql("DELETE FROM schema_version WHERE version = 4")
    with engine.connect() as conn:
        assert applied_versions(conn) == set(ALL_VERSIONS) - {4}
        last_of_2 = conn.exec_driver_sql("SELECT MAX(local_date) FROM appointments WHERE physio_id = 2").scalar()
    assert str(last_of_2) == "2026-03-30"

    assert migrate(engine) == [4]
    assert migrate(engine) == []

    with engine.connect() as conn:
        after = [(p, w, s, e, f and str(f), t and str(t)) for p, w, s, e, f, t in conn.exec_driver_sql(
            "SELECT physio_id, weekday, start_time, end_time, valid_from, valid_to FROM physio_hours ORDER BY 1, 2, 3")]
        assert applied_versions(conn) == set(ALL_VERSIONS)
    expected = {1: None, 2: "2026-03-30", 3: "2026-02-01"}  # 3 never had an appointment: before the data's first day
    assert after == [(p, w, s, e, None, expected[p]) for p, w, s, e in rows]
    # the same block may now start again on a later day (a roster with history), but not twice on one day
    with db.begin_write(engine) as conn:
        conn.execute(db.physio_hours.insert().values(physio_id=1, weekday=0, start_time="08:00", end_time="12:00",
                                                     valid_from="2026-04-06"))
    with pytest.raises(sa.exc.IntegrityError):
        with db.begin_write(engine) as conn:
            conn.execute(db.physio_hours.insert().values(physio_id=1, weekday=0, start_time="08:00", end_time="13:00"))
    with pytest.raises(sa.exc.IntegrityError):  # a block's days run forwards
        with db.begin_write(engine) as conn:
            conn.execute(db.physio_hours.insert().values(physio_id=1, weekday=1, start_time="08:00", end_time="13:00",
                                                         valid_from="2026-04-06", valid_to="2026-04-05"))
    engine.dispose()
