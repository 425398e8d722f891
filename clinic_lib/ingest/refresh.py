"""Loading the clinic's data: the initial load from ``data/raw/`` and the daily refresh of a drop.

``refresh_day(D)`` applies the drop ``data/daily/D/`` in one transaction:
- D's appointments (clinic-local date D) and D's payments (paid on local date D) are replaced
  exactly: rows of D that are gone from the drop are deleted;
- every other row of the drop (future appointments booked or changed on D, the patients and
  physios they reference) is upserted by id;
- the run is logged in ``etl_runs`` whether it worked or not: a refresh that worked in the same
  transaction as its data (a run stopped at any point leaves both or neither), a failed one in a
  transaction of its own, which changes nothing else.
Applying the same drop twice leaves the database identical.
"""
from __future__ import annotations

import datetime as dt
import sqlite3
import time
from dataclasses import dataclass
from functools import partial
from itertools import chain
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from clinic_lib.core import db
from clinic_lib.core.clinic_days import is_clinic_day
from clinic_lib.core.config import get_settings
from clinic_lib.core.errors import UserError
from clinic_lib.core.migrate import SQLITE_PAYMENT_INSERT_TRIGGER, ensure_schema
from clinic_lib.core.roster import apply_drop_to_database, end_leavers_rosters
from clinic_lib.core.timeutil import parse_day, utc_now_text
from clinic_lib.ingest import sqlite_ingest
from clinic_lib.ingest.call_history import import_call_history, read_call_history
from clinic_lib.ingest.drop_format import COLUMNS, ID_COLUMN, DropError, Tables, check_folder, read_folder, read_table
from clinic_lib.validation.checks import NO_ROWS_FOR_DAY

# Insert order respects foreign keys; deletes go the other way.
LOAD_ORDER = ("physios", "physio_hours", "patients", "appointments", "payments")
PRIMARY_KEYS = {"patients": ("patient_id",), "physios": ("physio_id",),
                "physio_hours": ("physio_id", "weekday", "start_time"),  # no key: the order rows are written in
                "appointments": ("appointment_id",), "payments": ("payment_id",)}


class RefreshError(UserError):
    """A drop could not be applied; the database is unchanged (the etl_runs row says why)."""


@dataclass
class RefreshResult:
    day: dt.date
    rows_read: int
    rows_written: int
    deleted: int
    seconds: float


def db_columns(table: str) -> list[str]:
    return [c.name for c in db.metadata.tables[table].columns]


def _column_values(series: pd.Series) -> list:
    """Plain Python values (None for missing): sqlite3 and psycopg cannot bind numpy scalars."""
    if pd.api.types.is_integer_dtype(series.dtype):
        return series.astype("Int64").to_numpy(dtype=object, na_value=None).tolist()
    values = series.to_numpy(dtype=object)
    mask = pd.isna(values)
    if mask.any():
        values = values.copy()
        values[mask] = None
    return values.tolist()


def _rows(frame: pd.DataFrame, columns: list[str]) -> list[tuple]:
    """Rows as tuples in column order, for executemany."""
    return list(zip(*(_column_values(frame[c]) for c in columns)))


def _placeholders(conn, n: int) -> str:
    mark = "?" if db.is_sqlite(conn) else "%s"
    return ", ".join([mark] * n)


def upsert(conn: sa.Connection, table: str, frame: pd.DataFrame) -> int:
    """INSERT .. ON CONFLICT (pk) DO UPDATE: the same statement on SQLite and Postgres."""
    if frame.empty:
        return 0
    columns = db_columns(table)
    pk = PRIMARY_KEYS[table]
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in pk)
    sql = (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({_placeholders(conn, len(columns))}) "
           f"ON CONFLICT ({', '.join(pk)}) DO " + (f"UPDATE SET {updates}" if updates else "NOTHING"))
    conn.exec_driver_sql(sql, _rows(frame, columns))
    return len(frame)


def _rows_per_statement(conn, n_columns: int) -> int:
    """How many rows one INSERT may carry: 500, or fewer where SQLite allows fewer parameters."""
    limit = 65535  # Postgres' bound-parameter limit
    if db.is_sqlite(conn):
        raw = conn.connection.driver_connection
        limit = raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) if hasattr(raw, "getlimit") else 999
    return max(1, min(500, limit // n_columns))


def bulk_insert(conn: sa.Connection, table: str, frame: pd.DataFrame) -> int:
    """Insert the rows of ``frame``, many per statement: on SQLite about half the time of one
    statement per row."""
    if frame.empty:
        return 0
    columns = db_columns(table)
    rows = _rows(frame, columns)
    per = _rows_per_statement(conn, len(columns))
    one_row = f"({_placeholders(conn, len(columns))})"
    insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
    whole = len(rows) - len(rows) % per
    if whole:
        conn.exec_driver_sql(insert + ", ".join([one_row] * per),
                             [tuple(chain.from_iterable(rows[i:i + per])) for i in range(0, whole, per)])
    if whole < len(rows):
        conn.exec_driver_sql(insert + one_row, rows[whole:])
    return len(rows)


def log_etl_run(engine: sa.Engine, job: str, day, started: str, status: str, rows_read=0,
                rows_written=0, error: str | None = None) -> None:
    """One row of etl_runs, in a transaction of its own (a run that changed nothing)."""
    with db.begin_write(engine) as conn:
        insert_etl_run(conn, job, day, started, status, rows_read, rows_written, error)


def insert_etl_run(conn: sa.Connection, job: str, day, started: str, status: str, rows_read=0,
                   rows_written=0, error: str | None = None) -> None:
    """One row of etl_runs in the caller's transaction: with the data it records, so that both
    are committed or neither."""
    conn.execute(db.etl_runs.insert().values(
        job=job, day=str(day) if day else None, started_at=started, finished_at=utc_now_text(),
        status=status, rows_read=rows_read, rows_written=rows_written,
        error_message=(error or None) and str(error)[:2000]))


def _check_references(conn: sa.Connection, tables: Tables) -> None:
    """Every id a drop refers to exists in the drop or in the database (named by file and line)."""
    def known(table: str, column: str, ids) -> set:
        ids = [int(i) for i in pd.unique(pd.Series(ids).dropna())]
        if not ids:
            return set()
        t = db.metadata.tables[table]
        found = set()
        for i in range(0, len(ids), 900):  # stay under SQLite's bound-parameter limit
            found |= set(conn.execute(sa.select(t.c[column]).where(t.c[column].in_(ids[i:i + 900]))).scalars())
        return found

    checks = [("appointments", "patient_id", "patients"), ("appointments", "physio_id", "physios"),
              ("payments", "appointment_id", "appointments")]
    if "physio_hours" in tables.frames:
        checks.append(("physio_hours", "physio_id", "physios"))
    for child, column, parent in checks:
        frame = tables[child]
        refs = frame[column]
        in_drop = refs.isin(tables[parent][column]) if parent in tables.frames else pd.Series(False, index=frame.index)
        outside = refs[~in_drop & refs.notna()]
        if outside.empty:
            continue
        missing = ~outside.isin(known(parent, column, outside))
        if missing.any():
            pos = frame.index.get_loc(outside[missing].index[0])
            raise DropError(f"{child}.csv", f"refers to a {parent[:-1]} that is in neither the drop "
                                            f"nor the database", line=pos + 2, column=column,
                            value=outside[missing].iloc[0])


VERSIONED_TABLES = ("patients", "physios", "appointments")  # rows carry source_day


def newer_in_database(conn: sa.Connection, table: str, frame: pd.DataFrame, day: str) -> pd.Series:
    """Rows of a drop for ``day`` whose id a later drop has already written (source_day > day).

    Applying an old drop again must not put those rows back to their older state.
    """
    t = db.metadata.tables[table]
    id_col = t.c[ID_COLUMN[table]]
    # one probe of the partial index ix_<table>_source_day, whose condition the query repeats
    latest = conn.execute(sa.select(sa.func.max(t.c.source_day)).where(t.c.source_day.is_not(None))).scalar()
    if latest is None or str(latest) <= day:  # the usual case, days applied in order: nothing newer
        return pd.Series(False, index=frame.index)
    ids = [int(i) for i in frame[id_col.name].dropna().unique()]
    newer = set()
    for i in range(0, len(ids), 900):
        newer |= set(conn.execute(sa.select(id_col).where(
            id_col.in_(ids[i:i + 900]), t.c.source_day > day)).scalars())
    return frame[id_col.name].isin(newer)


def _delete_missing(conn, table: str, id_col: str, date_col: str, day: str, keep) -> int:
    t = db.metadata.tables[table]
    keep = [int(k) for k in keep]
    query = sa.select(t.c[id_col]).where(t.c[date_col] == day)
    if "source_day" in t.c:  # a row a later drop wrote is that drop's to keep or remove
        query = query.where(sa.or_(t.c.source_day.is_(None), t.c.source_day <= day))
    existing = set(conn.execute(query).scalars())
    gone = sorted(existing - set(keep))
    for i in range(0, len(gone), 900):
        conn.execute(t.delete().where(t.c[id_col].in_(gone[i:i + 900])))
    return len(gone)


def _describe_integrity_error(exc: sa.exc.IntegrityError) -> str:
    return f"the database refused the drop: {str(exc.orig).splitlines()[0]}"


def _refuse_a_block_twice(day: dt.date, hours) -> None:
    """A roster block (physio, weekday, start) twice in one drop: which one holds is unknowable."""
    if hours is None or not len(hours):
        return
    twice = hours.duplicated(["physio_id", "weekday", "start_time"], keep="first").to_numpy()
    if twice.any():
        row = hours[twice].iloc[0]
        raise RefreshError(f"refresh of {day}: physio_hours.csv holds the block of physio {row['physio_id']} on "
                           f"weekday {row['weekday']} from {row['start_time']} twice; nothing was changed")


def refresh_day(day, engine: sa.Engine | None = None, folder: Path | None = None,
                allow_empty: bool = False) -> RefreshResult:
    """Apply the drop of clinic-local day ``day`` in one transaction (see the module docstring)."""
    settings = get_settings()
    day = parse_day(day)
    engine = engine or db.make_engine()
    folder = Path(folder) if folder else settings.drop_dir(day)
    ensure_schema(engine)
    started, t0 = utc_now_text(), time.perf_counter()
    rows_read = 0
    try:
        tables = read_folder(folder, settings.clinic_tz)
        rows_read = tables.rows_read
        appts, pays = tables["appointments"], tables["payments"]
        day_text = day.isoformat()
        day_rows = int((appts["local_date"] == day_text).sum() + (pays["paid_date"] == day_text).sum())
        if day_rows == 0 and not allow_empty and is_clinic_day(engine, day):
            # An empty export of a working day is more often a broken export than a quiet day.
            raise DropError("appointments.csv", NO_ROWS_FOR_DAY.format(day=day_text))
        written = deleted = 0
        drop_physios = tables.frames.get("physios")  # as the drop has them: who it marks as gone
        with db.begin_write(engine) as conn:
            _check_references(conn, tables)
            for table in VERSIONED_TABLES:
                frame = tables.frames[table]
                stale = newer_in_database(conn, table, frame, day_text)
                tables.frames[table] = frame[~stale].assign(source_day=day_text)
            # Payments first: an appointment of D that is gone may only go with its payments.
            deleted += _delete_missing(conn, "payments", "payment_id", "paid_date", day_text,
                                       pays.loc[pays["paid_date"] == day_text, "payment_id"])
            deleted += _delete_missing(conn, "appointments", "appointment_id", "local_date", day_text,
                                       appts.loc[appts["local_date"] == day_text, "appointment_id"])
            for table in LOAD_ORDER:
                if table == "physio_hours":
                    # After the physios: a roster in the drop holds for the physios it names from
                    # this day on, and a physio the drop marks inactive has none after it (roster.py).
                    _refuse_a_block_twice(day, tables.frames.get(table))
                    written += apply_drop_to_database(conn, day, tables.frames.get(table), drop_physios)
                elif table in tables.frames:
                    written += upsert(conn, table, tables[table])
            # the record of the refresh commits with its data: a run stopped at any point leaves
            # both or neither
            insert_etl_run(conn, "refresh", day, started, "ok", rows_read, written)
    except (DropError, RefreshError) as exc:
        log_etl_run(engine, "refresh", day, started, "failed", rows_read, 0, str(exc))
        raise
    except sa.exc.IntegrityError as exc:
        message = _describe_integrity_error(exc)
        log_etl_run(engine, "refresh", day, started, "failed", rows_read, 0, message)
        raise RefreshError(f"refresh of {day}: {message}; nothing was changed") from exc
    return RefreshResult(day, rows_read, written, deleted, time.perf_counter() - t0)


def _check_payments_need_completed(tables: Tables) -> None:
    """Every payment of the files is for a completed appointment of the files: the payments
    trigger's rule, checked for the whole file at once and reported by line."""
    appts, pays = tables["appointments"], tables["payments"]
    status = pays["appointment_id"].map(appts.set_index("appointment_id")["status"])
    bad = (status != "completed").to_numpy()
    if bad.any():
        pos = int(bad.argmax())
        found = "not in appointments.csv" if pd.isna(status.iloc[pos]) else status.iloc[pos]
        raise DropError("payments.csv", f"a payment needs a completed appointment; this one's is {found}",
                        line=pos + 2, column="appointment_id", value=pays["appointment_id"].iloc[pos])


def _check_across_files(conn: sa.Connection, tables: Tables) -> None:
    """The rules between the files of a load, named by file and line (DropError)."""
    _check_references(conn, tables)
    _check_payments_need_completed(tables)


def first_broken_rule(conn: sa.Connection) -> str | None:
    """The first row breaking a rule the bulk load does not check row by row, or None.

    Every foreign key of the database that points at the clinic's tables, and "a payment needs
    a completed appointment": one anti-join each, a fraction of what the same checks cost row
    by row.
    """
    for table in db.metadata.sorted_tables:
        key = next(iter(table.primary_key.columns), None)
        if key is None:  # physio_hours has no key: its rows are named by physio
            key = next(iter(table.columns))
        for fk in table.foreign_keys:
            if fk.column.table.name not in LOAD_ORDER:
                continue
            # the distinct values first (an index-only scan), then one probe each: far fewer
            # probes than rows for the appointments' patient and physio ids
            values = sa.select(fk.parent.label("value")).where(fk.parent.is_not(None)).distinct().subquery()
            missing = conn.execute(sa.select(values.c.value).where(
                ~sa.exists().where(fk.column == values.c.value)).limit(1)).first()
            if missing:
                row = conn.execute(sa.select(key).where(fk.parent == missing[0]).order_by(key).limit(1)).scalar()
                return (f"{table.name} row {key.name}={row}: {fk.parent.name} {missing[0]} "
                        f"is not in {fk.column.table.name}")
    a, p = db.appointments, db.payments
    unpaid = conn.execute(sa.select(p.c.payment_id).where(~sa.exists().where(
        a.c.appointment_id == p.c.appointment_id, a.c.status == "completed")).limit(1)).scalar()
    if unpaid is not None:
        return f"payments row payment_id={unpaid}: a payment needs an existing, completed appointment"
    return None


def _in_key_order(table: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in primary-key order (each table's b-tree is then filled by appending); the index
    still says each row's place in its file."""
    key = list(PRIMARY_KEYS[table])
    if len(key) == 1 and frame[key[0]].is_monotonic_increasing:
        return frame  # as files usually are: no copy
    return frame.sort_values(key)


def _read_in_key_order(folder: Path, table: str, tz) -> pd.DataFrame:
    return _in_key_order(table, read_table(folder, table, tz))


def load_raw(engine: sa.Engine | None = None, folder: Path | None = None, replace: bool = False) -> int:
    """Initial load of ``data/raw/`` (all five files, and the optional call history of
    ``call_history.py``) into an empty database, in one transaction.

    With ``replace=True`` the clinic's data already there is deleted first (same transaction).
    Returns the number of rows written.
    """
    settings = get_settings()
    engine = engine or db.make_engine()
    folder = Path(folder) if folder else settings.raw_dir
    tz = settings.clinic_tz
    ensure_schema(engine)
    started = utc_now_text()
    try:
        check_folder(folder)
        history = read_call_history(folder)  # a bad value stops the load before anything is written
        # Into a SQLite file each file is read and checked on a second thread while SQLite
        # copies the one before into the database (sqlite_ingest); elsewhere all of them first.
        into_file = db.sqlite_file(engine) is not None
        tables = None if into_file else read_folder(folder, tz, required=tuple(COLUMNS), optional=())
        with db.begin_bulk_write(engine) as conn:
            have = conn.execute(sa.select(sa.func.count()).select_from(db.appointments)).scalar()
            if have and not replace:
                raise DropError(str(folder), f"the database already holds {have} appointments; "
                                "load into an empty database, or pass --replace to start over")
            if replace:
                # the clinic's data and everything derived from it, children before parents
                for table in reversed(db.metadata.sorted_tables):
                    if table.name in LOAD_ORDER + db.DERIVED_TABLES:
                        conn.execute(table.delete())
            # Into empty tables it is faster to build the secondary indices once, after the rows;
            # on SQLite the payment trigger (a lookup per row) likewise gives way to one check.
            for name in LOAD_ORDER:
                for ix in db.metadata.tables[name].indexes:
                    ix.drop(conn)
            sqlite = db.is_sqlite(conn)
            if sqlite:
                conn.exec_driver_sql(f"DROP TRIGGER {SQLITE_PAYMENT_INSERT_TRIGGER[0]}")

            def build_indexes(table: str) -> None:
                for ix in db.metadata.tables[table].indexes:
                    ix.create(conn)

            if into_file:
                # a table's indices are built while the next file is read (source_day stays NULL)
                frames = sqlite_ingest.insert_frames(
                    conn, {table: partial(_read_in_key_order, folder, table, tz) for table in LOAD_ORDER},
                    after_each=build_indexes)
                # back in file order: the checks below name lines by position
                tables = Tables({table: frame.sort_index() for table, frame in frames.items()},
                                rows_read=sum(len(frame) for frame in frames.values()))
                _check_across_files(conn, tables)
            else:
                _check_across_files(conn, tables)  # before the rows: Postgres checks keys per row
                for table in LOAD_ORDER:
                    frame = _in_key_order(table, tables[table])
                    if table in VERSIONED_TABLES:
                        frame = frame.assign(source_day=None)
                    if table == "physio_hours":
                        frame = frame.assign(valid_from=None, valid_to=None)  # the file's roster, open-ended
                    bulk_insert(conn, table, frame)
                    build_indexes(table)
            written = sum(len(tables[table]) for table in LOAD_ORDER)
            end_leavers_rosters(conn)  # physios who have left: their blocks end on their last appointment
            # the optional evening lists and calls from before Clinic Ops (call_history.py)
            written += import_call_history(conn, history, tables["appointments"], tables["patients"],
                                           settings.risk_thresholds)
            if sqlite:  # after the indices: the checks scan them instead of the tables
                broken = first_broken_rule(conn)
                if broken:
                    raise DropError(str(folder), f"the database refused the load: {broken}")
                conn.exec_driver_sql(SQLITE_PAYMENT_INSERT_TRIGGER[1])
    except (DropError, sa.exc.IntegrityError) as exc:
        message = _describe_integrity_error(exc) if isinstance(exc, sa.exc.IntegrityError) else str(exc)
        log_etl_run(engine, "load", None, started, "failed", 0, 0, message)
        if isinstance(exc, DropError):
            raise
        raise RefreshError(f"initial load: {message}; nothing was changed") from exc
    log_etl_run(engine, "load", None, started, "ok", tables.rows_read, written)
    return written
