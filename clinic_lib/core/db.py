"""The database: one engine factory and the schema, the same on SQLite and Postgres.

SQLAlchemy Core only. Instants are stored in UTC (ISO 8601 text with ``+00:00`` on SQLite,
``timestamptz`` on Postgres); calendar dates as ``YYYY-MM-DD`` text on SQLite and ``date`` on
Postgres; money as integer cents, so sums are exact on both. Constraints live in the table
definitions (CHECKs, foreign keys) and in triggers (see ``migrate.py``) where a CHECK cannot see
another table.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import sqlite3
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event

from clinic_lib.core.config import get_settings

metadata = sa.MetaData()

# Stored types, one per kind of value, with the SQLite form beside the Postgres one.


class Instant(sa.types.TypeDecorator):
    """An instant: UTC text 'YYYY-MM-DDTHH:MM:SS+00:00' on SQLite, timestamptz on Postgres.

    Binds accept that text or an aware datetime; results come back as that text on both.
    """
    impl = sa.String(25)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(25))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if dialect.name == "sqlite":
            return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+00:00")
        return value

    def process_result_value(self, value, dialect):
        if isinstance(value, dt.datetime):
            return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+00:00")
        return value


class Day(sa.types.TypeDecorator):
    """A calendar date: 'YYYY-MM-DD' text on SQLite, date on Postgres; results are that text."""
    impl = sa.String(10)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(10))
        return dialect.type_descriptor(sa.Date())

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if dialect.name == "sqlite":
            return value.isoformat() if isinstance(value, dt.date) else str(value)
        return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))

    def process_result_value(self, value, dialect):
        return value.isoformat() if isinstance(value, dt.date) else value


Flag = sa.SmallInteger
Cents = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

APPOINTMENT_STATUSES = ("booked", "completed", "canceled", "no_show")
MAX_ID = 2**63 - 1  # ids are BIGINT on Postgres and 64-bit INTEGER on SQLite
PAYMENT_METHODS = ("cash", "card", "transfer", "insurance")
CALL_OUTCOMES = ("reached", "voicemail", "no_answer", "confirmed", "rescheduled", "canceled")


def _flag(name: str, table: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(f"{name} IN (0, 1)", name=f"ck_{table}_{name}_flag")


def _in(name: str, values, table: str) -> sa.CheckConstraint:
    listed = ", ".join(f"'{v}'" for v in values)
    return sa.CheckConstraint(f"{name} IN ({listed})", name=f"ck_{table}_{name}")


def _written_by_a_drop(table: str) -> sa.Index:
    """Rows a daily drop wrote (source_day set), for ``max(source_day)`` in the refresh.

    Partial: the initial load leaves source_day NULL, so after a load the index is empty and
    costs the load nothing; queries must say ``source_day IS NOT NULL`` to use it.
    """
    where = sa.text("source_day IS NOT NULL")
    return sa.Index(f"ix_{table}_source_day", "source_day", sqlite_where=where, postgresql_where=where)


patients = sa.Table(
    "patients", metadata,
    sa.Column("patient_id", Id, primary_key=True, autoincrement=False),
    sa.Column("first_name", sa.Text, nullable=False),
    sa.Column("last_name", sa.Text, nullable=False),
    sa.Column("phone", sa.Text),
    sa.Column("email", sa.Text),
    sa.Column("consent_form_received", Flag, nullable=False, server_default="0"),
    sa.Column("reminder_consent", Flag, nullable=False, server_default="0"),
    sa.Column("date_of_birth", Day),
    sa.Column("gender", sa.Text),
    sa.Column("created_at", Instant, nullable=False),
    sa.Column("source_day", Day),  # the drop that last wrote the row (NULL: initial load)
    _flag("consent_form_received", "patients"),
    _written_by_a_drop("patients"),
    _flag("reminder_consent", "patients"),
    sa.CheckConstraint("gender IS NULL OR gender IN ('F', 'M', 'X')", name="ck_patients_gender"),
)

physios = sa.Table(
    "physios", metadata,
    sa.Column("physio_id", Id, primary_key=True, autoincrement=False),
    sa.Column("full_name", sa.Text, nullable=False),
    sa.Column("active", Flag, nullable=False, server_default="1"),
    sa.Column("source_day", Day),  # the drop that last wrote the row (NULL: initial load)
    _flag("active", "physios"),
    _written_by_a_drop("physios"),
)

# The weekly roster with its history (roster.py): one row per block of work (a break splits a
# day into two blocks) and the days it holds for, valid_from .. valid_to (both included; NULL:
# unbounded on that side). Times are clinic-local wall-clock times 'HH:MM', so a roster means
# the same hours across DST. No primary key: a block is identified by physio, weekday, start and
# the day it starts, which may be NULL (the unique index reads NULL as the earliest day).
physio_hours = sa.Table(
    "physio_hours", metadata,
    sa.Column("physio_id", Id, sa.ForeignKey("physios.physio_id", ondelete="CASCADE"), nullable=False),
    sa.Column("weekday", sa.SmallInteger, nullable=False),  # 0 = Monday .. 6 = Sunday
    sa.Column("start_time", sa.String(5), nullable=False),
    sa.Column("end_time", sa.String(5), nullable=False),
    sa.Column("valid_from", Day),  # the first day the block holds; NULL: since before the data
    sa.Column("valid_to", Day),  # the last day it holds; NULL: open-ended
    sa.CheckConstraint("weekday BETWEEN 0 AND 6", name="ck_physio_hours_weekday"),
    sa.CheckConstraint("end_time > start_time", name="ck_physio_hours_end_after_start"),
    sa.CheckConstraint("valid_from IS NULL OR valid_to IS NULL OR valid_to >= valid_from",
                       name="ck_physio_hours_valid_days"),
)
sa.Index("ux_physio_hours_block", physio_hours.c.physio_id, physio_hours.c.weekday, physio_hours.c.start_time,
         sa.func.coalesce(physio_hours.c.valid_from, sa.text("'0001-01-01'")), unique=True)

appointments = sa.Table(
    "appointments", metadata,
    sa.Column("appointment_id", Id, primary_key=True, autoincrement=False),
    sa.Column("patient_id", Id, sa.ForeignKey("patients.patient_id"), nullable=False),
    # Nullable: imported data (the public no-show file) has no practitioner.
    sa.Column("physio_id", Id, sa.ForeignKey("physios.physio_id")),
    sa.Column("appt_start", Instant, nullable=False),
    sa.Column("appt_end", Instant, nullable=False),
    sa.Column("booked_at", Instant, nullable=False),
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("canceled_at", Instant),
    sa.Column("price_estimate_cents", Cents),
    sa.Column("is_first_visit", Flag, nullable=False, server_default="0"),
    sa.Column("local_date", Day, nullable=False),  # clinic-local date of appt_start
    # The drop that last wrote the row (NULL: initial load). An older drop applied again never
    # overwrites a row a later drop wrote: re-running a range leaves the newest state.
    sa.Column("source_day", Day),
    _in("status", APPOINTMENT_STATUSES, "appointments"),
    sa.CheckConstraint("appt_end > appt_start", name="ck_appointments_end_after_start"),
    sa.CheckConstraint("booked_at <= appt_start", name="ck_appointments_booked_before_start"),
    sa.CheckConstraint("price_estimate_cents IS NULL OR price_estimate_cents >= 0",
                       name="ck_appointments_price_non_negative"),
    sa.CheckConstraint("canceled_at IS NULL OR status = 'canceled'",
                       name="ck_appointments_canceled_at_only_for_canceled"),
    _flag("is_first_visit", "appointments"),
    sa.Index("ix_appointments_local_date", "local_date"),
    # A patient's and a physio's appointments in time order, covering what is read of them: the
    # overlap checks of validate.py (start, end, status) and a patient's history for the features
    # (features.HISTORY_COLUMNS) come from the index without touching the table.
    sa.Index("ix_appointments_patient_start", "patient_id", "appt_start", "appt_end", "status", "canceled_at"),
    sa.Index("ix_appointments_physio_start", "physio_id", "appt_start", "appt_end", "status"),
    _written_by_a_drop("appointments"),
)

payments = sa.Table(
    "payments", metadata,
    sa.Column("payment_id", Id, primary_key=True, autoincrement=False),
    sa.Column("appointment_id", Id, sa.ForeignKey("appointments.appointment_id"), nullable=False),
    sa.Column("amount_cents", Cents, nullable=False),
    sa.Column("paid_at", Instant, nullable=False),
    sa.Column("paid_date", Day, nullable=False),  # clinic-local date of paid_at
    sa.Column("method", sa.String(10), nullable=False),
    sa.CheckConstraint("amount_cents >= 0", name="ck_payments_amount_non_negative"),
    _in("method", PAYMENT_METHODS, "payments"),
    sa.Index("ix_payments_paid_date", "paid_date"),
    # An appointment's payments (lookups, the foreign key), and covering for the payment checks of
    # validate.py and the KPIs (totals and duplicates per appointment).
    sa.Index("ix_payments_appointment_amount_paid", "appointment_id", "amount_cents", "paid_at"),
)

etl_runs = sa.Table(
    "etl_runs", metadata,
    sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job", sa.Text, nullable=False),
    sa.Column("day", Day),
    sa.Column("started_at", Instant, nullable=False),
    sa.Column("finished_at", Instant),
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("rows_read", sa.Integer, nullable=False, server_default="0"),
    sa.Column("rows_written", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error_message", sa.Text),
    _in("status", ("ok", "failed"), "etl_runs"),
    sa.Index("ix_etl_runs_job_day", "job", "day"),
)

validation_runs = sa.Table(
    "validation_runs", metadata,
    sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("scope", sa.String(10), nullable=False),  # 'drop' or 'db'
    sa.Column("day", Day),
    sa.Column("started_at", Instant, nullable=False),
    sa.Column("finished_at", Instant),
    sa.Column("status", sa.String(10), nullable=False),  # ok / warnings / errors / failed
    sa.Column("n_errors", sa.Integer, nullable=False, server_default="0"),
    sa.Column("n_warnings", sa.Integer, nullable=False, server_default="0"),
    sa.Column("report_path", sa.Text),
    sa.Column("summary", sa.Text),
    _in("scope", ("drop", "db"), "validation_runs"),
    _in("status", ("ok", "warnings", "errors", "failed"), "validation_runs"),
)

model_runs = sa.Table(
    "model_runs", metadata,
    sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model_version", sa.Text, nullable=False, unique=True),
    sa.Column("trained_at", Instant, nullable=False),
    sa.Column("as_of", Day, nullable=False),
    sa.Column("model_kind", sa.Text, nullable=False),
    sa.Column("train_start", Day),
    sa.Column("train_end", Day),
    sa.Column("valid_start", Day),
    sa.Column("valid_end", Day),
    sa.Column("n_train", sa.Integer),
    sa.Column("n_valid", sa.Integer),
    sa.Column("roc_auc", sa.Float),
    sa.Column("average_precision", sa.Float),
    sa.Column("brier", sa.Float),
    sa.Column("log_loss", sa.Float),
    sa.Column("base_rate", sa.Float),
    sa.Column("data_fingerprint", sa.Text),
    sa.Column("model_path", sa.Text),
)

risk_scores = sa.Table(
    "risk_scores", metadata,
    sa.Column("day", Day, primary_key=True),
    sa.Column("appointment_id", Id, sa.ForeignKey("appointments.appointment_id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("risk", sa.Float, nullable=False),
    sa.Column("risk_bucket", sa.String(10), nullable=False),
    sa.Column("model_version", sa.Text, nullable=False),
    sa.Column("scored_at", Instant, nullable=False),
    sa.CheckConstraint("risk >= 0 AND risk <= 1", name="ck_risk_scores_risk_range"),
    _in("risk_bucket", ("low", "medium", "high"), "risk_scores"),
)

priorities = sa.Table(
    "priorities", metadata,
    sa.Column("day", Day, primary_key=True),
    sa.Column("appointment_id", Id, sa.ForeignKey("appointments.appointment_id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("patient_id", Id, nullable=False),
    sa.Column("is_new_patient", Flag, nullable=False),
    sa.Column("missing_phone", Flag, nullable=False),
    sa.Column("missing_consent", Flag, nullable=False),
    sa.Column("risk_score", sa.Float, nullable=False),
    sa.Column("risk_bucket", sa.String(10), nullable=False),
    sa.Column("risk_source", sa.String(10), nullable=False),
    sa.Column("priority_score", sa.Float, nullable=False),
    sa.Column("priority_reason", sa.Text, nullable=False),
    sa.Column("built_at", Instant, nullable=False),
    # 1: held out of the calls at random (CALL_HOLDOUT_SHARE, holdout.py): reception skips the row,
    # which keeps its rank so the list shows it
    sa.Column("holdout", Flag, nullable=False, server_default="0"),
    _in("risk_source", ("model", "heuristic"), "priorities"),
    _flag("holdout", "priorities"),
    sa.Index("ix_priorities_day_rank", "day", "rank"),
)

# Reception's accounts for the screen (clinic_lib/reception/users.py). Rows are never deleted, only
# disabled, so every call outcome keeps the name of whoever recorded it.
users = sa.Table(
    "users", metadata,
    sa.Column("user_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(32), nullable=False),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("disabled", Flag, nullable=False, server_default="0"),
    # failed sign-ins in a row since the last success or lock; the fifth locks the name
    sa.Column("failed_sign_ins", sa.Integer, nullable=False, server_default="0"),
    sa.Column("locked_until", Instant),
    # a session carries the epoch it was signed in under; sign-out, disable and a new password
    # move it on, which ends every session of the user at its next request
    sa.Column("session_epoch", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", Instant, nullable=False),
    sa.Column("last_sign_in_at", Instant),
    sa.UniqueConstraint("name", name="uq_users_name"),
    _flag("disabled", "users"),
    sa.CheckConstraint("failed_sign_ins >= 0", name="ck_users_failed_sign_ins_non_negative"),
)

call_outcomes = sa.Table(
    "call_outcomes", metadata,
    sa.Column("outcome_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("appointment_id", Id, sa.ForeignKey("appointments.appointment_id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("outcome", sa.String(12), nullable=False),
    sa.Column("note", sa.Text),
    sa.Column("recorded_at", Instant, nullable=False),
    # who recorded it on the screen; NULL through the Bearer API and for rows from before accounts
    sa.Column("recorded_by", sa.Integer, sa.ForeignKey("users.user_id")),
    _in("outcome", CALL_OUTCOMES, "call_outcomes"),
    sa.Index("ix_call_outcomes_appointment", "appointment_id", "outcome_id"),
)

# The model in practice: one row per scored day whose outcomes are known (monitoring.py), recomputed
# whenever the day's scores, its list or its appointments change.
model_monitoring = sa.Table(
    "model_monitoring", metadata,
    sa.Column("day", Day, primary_key=True),
    sa.Column("n_scored", sa.Integer, nullable=False),  # rows of risk_scores for the day
    sa.Column("n_outcome", sa.Integer, nullable=False),  # of them with an outcome (the model's target rows)
    sa.Column("n_failed", sa.Integer, nullable=False),  # of those, no-shows and late cancellations
    sa.Column("mean_risk", sa.Float),  # mean predicted risk of the rows with an outcome
    sa.Column("observed_rate", sa.Float),  # n_failed / n_outcome
    sa.Column("roc_auc", sa.Float),  # NULL unless both outcomes occur
    sa.Column("k", sa.Integer, nullable=False),  # CALL_CAPACITY when computed
    sa.Column("list_built", Flag, nullable=False),  # a list (priorities) existed for the day
    sa.Column("list_n", sa.Integer, nullable=False),  # the list's top k rows
    sa.Column("list_n_outcome", sa.Integer, nullable=False),  # of them with an outcome
    sa.Column("list_n_failed", sa.Integer, nullable=False),
    sa.Column("precision_at_k", sa.Float),  # list_n_failed / list_n_outcome; NULL without a list
    sa.Column("model_versions", sa.Text, nullable=False),  # the versions that scored the day, comma-separated
    # what the row was computed from: a day whose scores or list changed since is recomputed
    sa.Column("scored_at", Instant, nullable=False),  # the latest scored_at of the day's scores
    sa.Column("built_at", Instant),  # the latest built_at of the list's top k rows
    sa.Column("computed_at", Instant, nullable=False),
    _flag("list_built", "model_monitoring"),
)

reminders = sa.Table(
    "reminders", metadata,
    sa.Column("reminder_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("appointment_id", Id, sa.ForeignKey("appointments.appointment_id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("message_id", sa.Text, nullable=False),
    sa.Column("file_path", sa.Text),
    sa.Column("smtp_delivered", Flag, nullable=False, server_default="0"),
    sa.Column("sent_at", Instant, nullable=False),
    sa.Index("ix_reminders_appointment", "appointment_id"),
)

# Tables holding the clinic's data (what a content hash compares); the rest are run logs.
DATA_TABLES = ("patients", "physios", "physio_hours", "appointments", "payments")
# What the daily chain derives from them; a content hash of these leaves out when they were made.
DERIVED_TABLES = ("risk_scores", "priorities", "reminders", "call_outcomes", "model_monitoring")
# Bookkeeping a content hash leaves out: when derived rows were made, which drop wrote a row.
RUN_TIMESTAMP_COLUMNS = frozenset({"scored_at", "built_at", "sent_at", "recorded_at", "source_day",
                                   "computed_at"})


BUSY_TIMEOUT_MS = 30_000  # how long a SQLite connection waits for another one's lock


def _sqlite_pragmas(dbapi_connection, _record):
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


def _sqlite_begin(conn):
    # Writers take the write lock at BEGIN (waiting up to busy_timeout) instead of failing on a
    # lock upgrade halfway through; readers start a plain deferred transaction.
    immediate = conn.get_execution_options().get("write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def begin_write(engine: sa.Engine):
    """A transaction that will write: ``with begin_write(engine) as conn: ...`` (one commit)."""
    return engine.execution_options(write=True).begin()


# conn.info key: the scratch files a bulk write's connection wrote (sqlite_ingest), removed at its end
SCRATCH_FILES = "bulk_write_scratch_files"


@contextmanager
def begin_bulk_write(engine: sa.Engine, check_foreign_keys: bool = False):
    """``begin_write`` for loading many rows at once (one commit).

    On SQLite the connection does not check foreign keys row by row unless asked to (the caller
    checks them once for all rows before it commits: ``refresh.first_broken_rule``) and sorts for
    index builds on two threads; afterwards the connection gets its usual settings back, and the
    scratch files ``sqlite_ingest.insert_frames`` attached to it are detached (SQLite cannot
    detach inside a transaction) and deleted, committed or not.

    When no other connection has the file open, the transaction also goes through a rollback
    journal instead of the WAL: the WAL writes every new page twice (to the log, then into the
    file at the checkpoint), a rollback journal only keeps the few pages that existed before, and
    a crash still rolls the whole transaction back (the "hot journal" is undone on the next open).
    The commit of a large load is much shorter that way. Meanwhile other connections wait
    for the load (busy timeout) instead of reading beside it.
    """
    if not is_sqlite(engine):
        with begin_write(engine) as conn:
            yield conn
        return
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        # PRAGMA foreign_keys and journal_mode are no-ops or errors inside a transaction: set
        # before BEGIN, put back after the end of it
        if not check_foreign_keys:
            raw.execute("PRAGMA foreign_keys = OFF")
        raw.execute("PRAGMA threads = 2")
        journaled = _rollback_journal_if_alone(raw)
        conn.info[SCRATCH_FILES] = []
        try:
            with conn.execution_options(write=True).begin():
                yield conn
        finally:
            try:
                # the pooled connection gets back only its own files
                for _, name, _ in raw.execute("PRAGMA database_list").fetchall():
                    if name not in ("main", "temp"):
                        raw.execute(f'DETACH DATABASE "{name}"')
                raw.execute("PRAGMA foreign_keys = ON")
                raw.execute("PRAGMA threads = 0")
                if journaled:
                    raw.execute("PRAGMA journal_mode = WAL")
                    raw.execute("PRAGMA synchronous = NORMAL")
            except Exception:
                # never back to the pool without foreign keys; the next connection sets WAL again
                conn.invalidate()
            finally:
                for path in conn.info.pop(SCRATCH_FILES, []):
                    path.unlink(missing_ok=True)


def _rollback_journal_if_alone(raw) -> bool:
    """Switch this connection's file from WAL to a rollback journal if no other connection has it
    open (SQLite refuses the switch otherwise: then the load stays in WAL, as correct, slower)."""
    raw.execute("PRAGMA busy_timeout = 0")  # another connection: refuse at once, do not wait 30 s
    try:
        mode = raw.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
    except sqlite3.OperationalError:
        mode = "wal"
    finally:
        raw.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if mode != "delete":
        return False
    raw.execute("PRAGMA synchronous = FULL")  # a rollback journal is crash-safe with FULL syncs
    return True


def sqlite_file(target) -> Path | None:
    """The database file of a SQLite URL, engine or connection; None for Postgres and in-memory
    SQLite (``sqlite://``, ``:memory:``, ``file:`` URIs)."""
    url = sa.engine.make_url(target) if isinstance(target, str) else getattr(target, "engine", target).url
    name = url.database
    if url.get_backend_name() != "sqlite" or not name or name == ":memory:" or name.startswith("file:"):
        return None
    return Path(name)


def make_engine(url: str | None = None) -> sa.Engine:
    """An engine for ``url`` (default: the configured DATABASE_URL).

    Every SQLite connection enforces foreign keys, uses WAL and waits up to 30 s for a lock.
    """
    url = url or get_settings().database_url
    if url.startswith("sqlite"):
        path = sqlite_file(url)
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url)
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling would start transactions late; take control so
        # that BEGIN is issued when SQLAlchemy begins, and a whole refresh is one transaction.
        event.listen(engine, "connect", lambda c, r: setattr(c, "isolation_level", None))
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return sa.create_engine(url, pool_pre_ping=True)


@lru_cache(maxsize=8)
def cached_engine(url: str) -> sa.Engine:
    """One engine per URL for long-lived processes (API, dashboard)."""
    return make_engine(url)


def is_sqlite(engine_or_conn) -> bool:
    return engine_or_conn.dialect.name == "sqlite"


def content_hash(engine: sa.Engine, tables=DATA_TABLES) -> str:
    """A hash of every row of the given tables (default: the clinic's data), in primary-key order.

    Bookkeeping (RUN_TIMESTAMP_COLUMNS: run timestamps, source_day) is left out, so a rerun that
    derives the same rows hashes the same.

    Values are normalised (instants to UTC text, dates to ISO text) so the same content hashes the
    same whichever database holds it.
    """
    from clinic_lib.core.timeutil import to_utc_text

    def norm(v):
        if isinstance(v, dt.datetime):
            return to_utc_text(v)
        if isinstance(v, dt.date):
            return v.isoformat()
        return v

    h = hashlib.sha256()
    with engine.connect() as conn:
        for name in tables:
            table = metadata.tables[name]
            pk = [c for c in table.primary_key.columns]
            columns = [c for c in table.columns if c.name not in RUN_TIMESTAMP_COLUMNS]
            h.update(name.encode())
            if pk:
                rows = (tuple(norm(v) for v in row) for row in conn.execute(sa.select(*columns).order_by(*pk)))
            else:  # a small table without a key (physio_hours): sorted here, where NULLs sort the same everywhere
                rows = sorted((tuple(norm(v) for v in row) for row in conn.execute(sa.select(*columns))),
                              key=lambda r: tuple((v is not None, "" if v is None else str(v)) for v in r))
            for row in rows:
                h.update(repr(row).encode())
    return h.hexdigest()
