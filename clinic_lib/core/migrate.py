"""Versioned, idempotent migrations; the version is recorded in the ``schema_version`` table.

``migrate(engine)`` brings any database to the current schema:
- an empty database gets every table, index and trigger;
- a database in the layout of the public reference project *clinic-ops-automation* (tables
  patients, physios, appointments, payments, etl_runs with ISO text timestamps and no constraints)
  is converted in one transaction; a row that breaks a rule of the new schema stops it, nothing
  changes, and the error names the table, the row id and the rule;
- a database already at the current version is left alone.
Each migration runs in one transaction with its version row, so a crash leaves the previous version.
"""
from __future__ import annotations

import pandas as pd
import sqlalchemy as sa

from clinic_lib.core import db
from clinic_lib.core.config import get_settings
from clinic_lib.core.errors import UserError
from clinic_lib.core.timeutil import series_local_date, series_to_utc_text, utc_now_text
from clinic_lib.ingest.drop_format import OFFSET_PATTERN

schema_version = sa.Table(
    "schema_version", sa.MetaData(),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("applied_at", sa.Text, nullable=False),
)


class MigrationError(UserError):
    """A row of an old database breaks a rule of the current schema; nothing was changed."""


# --- triggers: the rules a CHECK cannot express because they look at another table ------------

# The initial load drops this one for its bulk insert and checks the rule once for all rows.
SQLITE_PAYMENT_INSERT_TRIGGER = ("trg_payments_need_completed_insert",
    """CREATE TRIGGER IF NOT EXISTS trg_payments_need_completed_insert
       BEFORE INSERT ON payments
       WHEN (SELECT status FROM appointments WHERE appointment_id = NEW.appointment_id) IS NOT 'completed'
       BEGIN SELECT RAISE(ABORT, 'payments: a payment needs an existing, completed appointment'); END""")

SQLITE_TRIGGERS = [
    SQLITE_PAYMENT_INSERT_TRIGGER[1],
    """CREATE TRIGGER IF NOT EXISTS trg_payments_need_completed_update
       BEFORE UPDATE OF appointment_id ON payments
       WHEN (SELECT status FROM appointments WHERE appointment_id = NEW.appointment_id) IS NOT 'completed'
       BEGIN SELECT RAISE(ABORT, 'payments: a payment needs an existing, completed appointment'); END""",
    """CREATE TRIGGER IF NOT EXISTS trg_appointments_paid_stays_completed
       BEFORE UPDATE OF status ON appointments
       WHEN NEW.status <> 'completed'
        AND EXISTS (SELECT 1 FROM payments WHERE appointment_id = NEW.appointment_id)
       BEGIN SELECT RAISE(ABORT, 'appointments: an appointment with payments must stay completed'); END""",
]

POSTGRES_TRIGGERS = [
    """CREATE OR REPLACE FUNCTION payments_need_completed() RETURNS trigger AS $$
       BEGIN
         IF (SELECT status FROM appointments WHERE appointment_id = NEW.appointment_id)
            IS DISTINCT FROM 'completed' THEN
           RAISE EXCEPTION 'payments: a payment needs an existing, completed appointment'
             USING ERRCODE = 'check_violation';
         END IF;
         RETURN NEW;
       END $$ LANGUAGE plpgsql""",
    "DROP TRIGGER IF EXISTS trg_payments_need_completed ON payments",
    """CREATE TRIGGER trg_payments_need_completed BEFORE INSERT OR UPDATE OF appointment_id
       ON payments FOR EACH ROW EXECUTE FUNCTION payments_need_completed()""",
    """CREATE OR REPLACE FUNCTION appointments_paid_stays_completed() RETURNS trigger AS $$
       BEGIN
         IF NEW.status <> 'completed'
            AND EXISTS (SELECT 1 FROM payments WHERE appointment_id = NEW.appointment_id) THEN
           RAISE EXCEPTION 'appointments: an appointment with payments must stay completed'
             USING ERRCODE = 'check_violation';
         END IF;
         RETURN NEW;
       END $$ LANGUAGE plpgsql""",
    "DROP TRIGGER IF EXISTS trg_appointments_paid_stays_completed ON appointments",
    """CREATE TRIGGER trg_appointments_paid_stays_completed BEFORE UPDATE OF status
       ON appointments FOR EACH ROW EXECUTE FUNCTION appointments_paid_stays_completed()""",
]


def _create_schema(conn: sa.Connection) -> None:
    db.metadata.create_all(conn)
    for statement in SQLITE_TRIGGERS if db.is_sqlite(conn) else POSTGRES_TRIGGERS:
        conn.exec_driver_sql(statement)


# --- the reference project's layout ------------------------------------------------------------

REFERENCE_TABLES = ("payments", "appointments", "patients", "physios", "etl_runs")


def _is_reference_layout(inspector: sa.Inspector) -> bool:
    tables = set(inspector.get_table_names())
    if "appointments" not in tables or "schema_version" in tables:
        return False
    columns = {c["name"] for c in inspector.get_columns("appointments")}
    return "appt_start" in columns and "local_date" not in columns


def _fail(table: str, frame: pd.DataFrame, bad: pd.Series, id_col: str, rule: str):
    if bad.any():
        row_id = frame.loc[bad, id_col].iloc[0]
        n = int(bad.sum())
        raise MigrationError(
            f"{table} row {id_col}={row_id} breaks the rule '{rule}'"
            + (f" ({n} rows in all)" if n > 1 else "") + "; nothing was changed")


def _instants(table: str, frame: pd.DataFrame, col: str, id_col: str) -> pd.Series:
    # Without an offset a wall-clock time is ambiguous on the night the clocks go back: refuse it.
    values = frame[col].astype("string").str.strip()
    has_offset = values.str.contains(OFFSET_PATTERN, na=False)
    parsed = pd.to_datetime(values.where(has_offset), utc=True, errors="coerce", format="ISO8601")
    _fail(table, frame, parsed.isna(), id_col, f"{col} is an ISO 8601 timestamp with offset")
    return parsed


def _convert_reference(conn: sa.Connection) -> dict[str, pd.DataFrame]:
    """Read the reference tables and convert them to the current schema, checking every rule."""
    tz = get_settings().clinic_tz
    read = lambda t: pd.read_sql(sa.text(f"SELECT * FROM legacy_{t}"), conn)  # noqa: E731
    out: dict[str, pd.DataFrame] = {}

    p = read("patients")
    created = _instants("patients", p, "created_at", "patient_id")
    consent = pd.to_numeric(p["consent_form_received"], errors="coerce")
    _fail("patients", p, ~consent.isin([0, 1]), "patient_id", "consent_form_received IN (0, 1)")
    names = p.get("first_name")
    _fail("patients", p, names.isna() | p["last_name"].isna(), "patient_id", "name is not empty")
    out["patients"] = pd.DataFrame({
        "patient_id": p["patient_id"], "first_name": p["first_name"], "last_name": p["last_name"],
        "phone": p["phone"], "email": None, "consent_form_received": consent.astype(int),
        "reminder_consent": 0, "date_of_birth": None, "gender": None,
        "created_at": series_to_utc_text(created)})

    ph = read("physios")
    out["physios"] = pd.DataFrame({"physio_id": ph["physio_id"], "full_name": ph["full_name"], "active": 1})

    a = read("appointments")
    start = _instants("appointments", a, "appt_start", "appointment_id")
    end = _instants("appointments", a, "appt_end", "appointment_id")
    booked = _instants("appointments", a, "booked_at", "appointment_id")
    _fail("appointments", a, ~a["status"].isin(db.APPOINTMENT_STATUSES), "appointment_id",
          "status IN ('booked', 'completed', 'canceled', 'no_show')")
    _fail("appointments", a, ~(end > start), "appointment_id", "appt_end > appt_start")
    _fail("appointments", a, ~(booked <= start), "appointment_id", "booked_at <= appt_start")
    price = pd.to_numeric(a["price_estimate"], errors="coerce")
    _fail("appointments", a, price < 0, "appointment_id", "price_estimate >= 0")
    _fail("appointments", a, ~a["patient_id"].isin(p["patient_id"]), "appointment_id",
          "patient_id references patients")
    _fail("appointments", a, ~a["physio_id"].isin(ph["physio_id"]), "appointment_id",
          "physio_id references physios")
    order = a.assign(_start=start).sort_values(["patient_id", "_start", "appointment_id"])
    first = ~order.duplicated("patient_id")
    out["appointments"] = pd.DataFrame({
        "appointment_id": a["appointment_id"], "patient_id": a["patient_id"], "physio_id": a["physio_id"],
        "appt_start": series_to_utc_text(start), "appt_end": series_to_utc_text(end),
        "booked_at": series_to_utc_text(booked), "status": a["status"], "canceled_at": None,
        "price_estimate_cents": (price * 100).round().astype("Int64"),
        "is_first_visit": first.reindex(a.index).astype(int),
        "local_date": series_local_date(start, tz)})

    pay = read("payments")
    paid = _instants("payments", pay, "paid_at", "payment_id")
    amount = pd.to_numeric(pay["amount"], errors="coerce")
    _fail("payments", pay, ~(amount >= 0), "payment_id", "amount >= 0")
    method = pay["method"].astype(str).str.strip().str.lower()
    _fail("payments", pay, ~method.isin(db.PAYMENT_METHODS), "payment_id",
          "method IN ('cash', 'card', 'transfer', 'insurance')")
    completed = set(a.loc[a["status"] == "completed", "appointment_id"])
    _fail("payments", pay, ~pay["appointment_id"].isin(completed), "payment_id",
          "a payment needs an existing, completed appointment")
    out["payments"] = pd.DataFrame({
        "payment_id": pay["payment_id"], "appointment_id": pay["appointment_id"],
        "amount_cents": (amount * 100).round().astype("Int64"), "paid_at": series_to_utc_text(paid),
        "paid_date": series_local_date(paid, tz), "method": method})

    runs = read("etl_runs")
    ran = pd.to_datetime(runs["ran_at"], utc=True, errors="coerce", format="ISO8601")
    out["etl_runs"] = pd.DataFrame({
        "job": runs["job"].astype(str), "day": runs["target_date"].astype(str).str[:10],
        "started_at": series_to_utc_text(ran), "finished_at": series_to_utc_text(ran),
        "status": "ok", "rows_read": 0, "rows_written": 0, "error_message": None})
    return out


def _upgrade_reference(conn: sa.Connection) -> None:
    existing = set(sa.inspect(conn).get_table_names())
    for t in REFERENCE_TABLES:
        if t in existing:
            conn.exec_driver_sql(f"ALTER TABLE {t} RENAME TO legacy_{t}")
        else:
            # A reference database may lack a table it never used; an empty one stands in.
            columns = {"payments": "payment_id, appointment_id, amount, paid_at, method",
                       "etl_runs": "id, job, target_date, ran_at",
                       "physios": "physio_id, full_name"}.get(t)
            if columns is None:
                raise MigrationError(f"reference database has no {t} table; nothing was changed")
            conn.exec_driver_sql(f"CREATE TABLE legacy_{t} ({columns})")
    converted = _convert_reference(conn)
    _create_schema(conn)
    for name in ("physios", "patients", "appointments", "payments", "etl_runs"):
        frame = converted[name]
        if len(frame):
            rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
            conn.execute(db.metadata.tables[name].insert(), rows)
    for t in REFERENCE_TABLES:
        conn.exec_driver_sql(f"DROP TABLE legacy_{t}")


# --- the list of migrations ----------------------------------------------------------------------

def _migration_1(conn: sa.Connection) -> None:
    if _is_reference_layout(sa.inspect(conn)):
        _upgrade_reference(conn)
    else:
        _create_schema(conn)


def _migration_2(conn: sa.Connection) -> None:
    """source_day (indexed) on the versioned tables; covering indices for the validation gate.

    Migration 1 creates today's tables, which already have both: each change is made only if missing.
    """
    inspector = sa.inspect(conn)
    day_type = "VARCHAR(10)" if db.is_sqlite(conn) else "DATE"
    for table in ("patients", "physios", "appointments"):
        if "source_day" not in {c["name"] for c in inspector.get_columns(table)}:
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN source_day {day_type}")
    for table in ("patients", "physios", "appointments", "payments"):
        existing = {ix["name"] for ix in inspector.get_indexes(table)}
        for index in db.metadata.tables[table].indexes:
            if index.name not in existing:
                index.create(conn)


# Indices version 3 drops or defines anew (db.py has the current definitions).
_INDICES_CHANGED_IN_3 = {
    "payments": ("ix_payments_appointment",),  # a prefix of ix_payments_appointment_amount_paid
    "appointments": ("ix_appointments_patient_busy", "ix_appointments_physio_busy",  # merged into
                     "ix_appointments_patient_start", "ix_appointments_physio_start",  # these two
                     "ix_appointments_source_day"),  # now partial, as are the two below
    "patients": ("ix_patients_source_day",),
    "physios": ("ix_physios_source_day",),
}


def _migration_3(conn: sa.Connection) -> None:
    """Fewer, wider indices: 11 -> 8 on the clinic's tables, 3 of them partial and empty after an
    initial load. Each query keeps an index (tests check the plans); an initial load fills five
    indices instead of eleven.

    Rebuilding is idempotent: whatever the database had under these names is replaced.
    """
    for table, names in _INDICES_CHANGED_IN_3.items():
        for name in names:
            conn.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")
        current = {ix.name: ix for ix in db.metadata.tables[table].indexes}
        for name in names:
            if name in current:
                current[name].create(conn)


def _migration_4(conn: sa.Connection) -> None:
    """Roster history: physio_hours gains valid_from and valid_to (roster.py), and its primary key
    (physio, weekday, start) gives way to a unique index that includes the day a block starts.

    The existing blocks stay and hold open-ended, except those of physios who have already left
    (active 0): they end on the day of the physio's last appointment, so the days after no longer
    count them. Migration 1 creates today's table: then only that last step runs (on no rows).
    """
    from clinic_lib.core.roster import end_leavers_rosters
    if "valid_from" not in {c["name"] for c in sa.inspect(conn).get_columns("physio_hours")}:
        # No database alters a primary key in place on both SQLite and Postgres: the table is
        # made anew under its name and the blocks are copied into it.
        conn.exec_driver_sql("ALTER TABLE physio_hours RENAME TO physio_hours_before_history")
        db.physio_hours.create(conn)
        conn.exec_driver_sql("INSERT INTO physio_hours (physio_id, weekday, start_time, end_time) "
                             "SELECT physio_id, weekday, start_time, end_time FROM physio_hours_before_history")
        conn.exec_driver_sql("DROP TABLE physio_hours_before_history")
    end_leavers_rosters(conn)


def _migration_5(conn: sa.Connection) -> None:
    """Reception's accounts (``users``) and who recorded each call (``call_outcomes.recorded_by``,
    NULL for the outcomes recorded before). Migration 1 creates both: each is added only if missing."""
    inspector = sa.inspect(conn)
    if "users" not in inspector.get_table_names():
        db.users.create(conn)
    if "recorded_by" not in {c["name"] for c in inspector.get_columns("call_outcomes")}:
        # SQLite adds a column with a foreign key only with a NULL default: the old rows get NULL
        conn.exec_driver_sql("ALTER TABLE call_outcomes ADD COLUMN recorded_by INTEGER "
                             "REFERENCES users (user_id)")


def _migration_7(conn: sa.Connection) -> None:
    """The model-monitoring table and the call holdout's flag on the callback list.

    Migration 1 creates today's tables, which already have both: each change only if missing.
    """
    db.model_monitoring.create(conn, checkfirst=True)
    if "holdout" not in {c["name"] for c in sa.inspect(conn).get_columns("priorities")}:
        # the same statement on SQLite and Postgres; existing rows were never held out
        conn.exec_driver_sql("ALTER TABLE priorities ADD COLUMN holdout SMALLINT DEFAULT '0' NOT NULL "
                             "CONSTRAINT ck_priorities_holdout_flag CHECK (holdout IN (0, 1))")


MIGRATIONS = [
    (1, "initial schema: clinic data, run logs, scores, priorities, call outcomes, reminders",
     _migration_1),
    (2, "source_day (which drop wrote a row, indexed) and covering indices for validation", _migration_2),
    (3, "fewer, wider indices: covering slot indices per patient and physio, partial source_day "
        "indices, no duplicate payments index", _migration_3),
    (4, "roster history: physio_hours blocks hold from valid_from to valid_to; leavers' blocks end "
        "on their last appointment", _migration_4),
    (5, "reception's accounts (users) and who recorded each call outcome", _migration_5),
    (7, "model monitoring (one row per scored day with known outcomes) and the call holdout flag "
        "on priorities", _migration_7),
]
CURRENT_VERSION = max(version for version, _, _ in MIGRATIONS)


def applied_versions(conn: sa.Connection) -> set[int]:
    if "schema_version" not in sa.inspect(conn).get_table_names():
        return set()
    return set(conn.execute(sa.select(schema_version.c.version)).scalars())


def current_version(conn: sa.Connection) -> int:
    return max(applied_versions(conn), default=0)


def migrate(engine: sa.Engine | None = None) -> list[int]:
    """Apply the migrations this database lacks; returns the versions applied (empty if none).

    A migration is applied when its own version is missing from ``schema_version``, not when the
    highest version is lower: numbers are reserved per change, and one with a lower number may
    arrive after a database already has a higher one.
    """
    engine = engine or db.make_engine()
    applied = []
    for version, description, step in MIGRATIONS:
        with db.begin_write(engine) as conn:
            if version in applied_versions(conn):
                continue
            try:
                step(conn)
            except sa.exc.IntegrityError as exc:
                raise MigrationError(f"migration {version} refused a row: {exc.orig}; nothing was changed") from exc
            schema_version.create(conn, checkfirst=True)
            conn.execute(schema_version.insert().values(
                version=version, description=description, applied_at=utc_now_text()))
        applied.append(version)
    return applied


def ensure_schema(engine: sa.Engine) -> None:
    """Migrate if needed; cheap when the database is current (one query)."""
    with engine.connect() as conn:
        if {version for version, _, _ in MIGRATIONS} <= applied_versions(conn):
            return
    migrate(engine)
