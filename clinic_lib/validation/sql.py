"""SQL shared by the drop and database checks: parameters, row checks on appointments and payments, roster checks."""
from __future__ import annotations

import numpy as np
import pandas as pd
import sqlalchemy as sa

from clinic_lib.core import db
from clinic_lib.core.config import get_settings
from clinic_lib.core.errors import CannotRun
from clinic_lib.validation.report import MAX_EXAMPLES, Report


def payment_max_factor() -> float:
    return get_settings().payment_max_factor


def _rows(conn, sql: str, **params) -> list[dict]:
    return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]


def _instant_param(conn, name: str) -> str:
    return f":{name}" if db.is_sqlite(conn) else f"CAST(:{name} AS TIMESTAMP WITH TIME ZONE)"


def _date_param(conn, name: str) -> str:
    return f":{name}" if db.is_sqlite(conn) else f"CAST(:{name} AS DATE)"


def _require_schema(engine: sa.Engine) -> None:
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
    except sa.exc.SQLAlchemyError as exc:
        raise CannotRun(f"cannot open the database: {str(exc).splitlines()[0]}") from None
    needed = set(db.DATA_TABLES) | {"validation_runs"}
    if not needed <= tables:
        raise CannotRun(f"the database has no clinic schema (missing {', '.join(sorted(needed - tables))}): "
                        "run `clinic migrate` (and `clinic load`) first")


APPOINTMENT_ROW_CHECKS = [
    ("time.end_before_start", "a.appt_end <= a.appt_start", "appt_end", ("ck_appointments_end_after_start",)),
    ("time.booked_after_start", "a.booked_at > a.appt_start", "booked_at", ("ck_appointments_booked_before_start",)),
    ("time.canceled_at_not_canceled", "a.canceled_at IS NOT NULL AND a.status <> 'canceled'", "canceled_at",
     ("ck_appointments_canceled_at_only_for_canceled",)),
    ("time.canceled_after_start", "a.status = 'canceled' AND a.canceled_at > a.appt_start", "canceled_at", ()),
    ("time.outcome_in_future", "a.status IN ('completed', 'no_show') AND a.appt_start >= {horizon}", "status", ()),
]


DB_ONLY_APPOINTMENT_CHECKS = [
    ("status.invalid", "a.status IS NULL OR a.status NOT IN ('booked', 'completed', 'canceled', 'no_show')",
     "status", ("ck_appointments_status",)),
    ("flag.invalid", "a.is_first_visit IS NULL OR a.is_first_visit NOT IN (0, 1)", "is_first_visit",
     ("ck_appointments_is_first_visit_flag",)),
    ("price.negative", "a.price_estimate_cents < 0", "price_estimate_cents", ("ck_appointments_price_non_negative",)),
]


_CANONICAL = "'[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]+00:00'"


APPOINTMENT_COLUMNS = "a.appointment_id, a.patient_id, a.physio_id, a.appt_start, a.appt_end, a.booked_at, a.status, a.canceled_at"


def _example(row: dict, file: str | None, column: str) -> dict:
    line = row.pop("line", None)
    if file is None:
        return row
    return {"file": file, "line": line, "column": column, **row}


def _row_checks(conn, report: Report, table_sql: str, checks, file: str | None, params: dict,
                extra_cols: str = "") -> None:
    """Count every condition in one pass; fetch examples only for the conditions that failed."""
    checks = [c for c in checks if c[0] in report.checks]
    if not checks:
        return
    if len(checks) == 1:  # a WHERE lets the planner use an index
        counts = conn.execute(sa.text(f"SELECT COUNT(*) FROM {table_sql} WHERE {checks[0][1]}"), params).one()
    else:
        sums = ", ".join(f"SUM(CASE WHEN {cond} THEN 1 ELSE 0 END) AS c{i}" for i, (_, cond, _, _) in enumerate(checks))
        counts = conn.execute(sa.text(f"SELECT {sums} FROM {table_sql}"), params).one()
    for i, (check_id, cond, column, _) in enumerate(checks):
        n = counts[i] or 0
        if n:
            order = "a.line" if file else "1"
            rows = _rows(conn, f"SELECT {extra_cols}{APPOINTMENT_COLUMNS if 'appointments' in table_sql else '*'} "
                               f"FROM {table_sql} WHERE {cond} ORDER BY {order} LIMIT {MAX_EXAMPLES}", **params)
            report.add(check_id, [_example(r, file, column) for r in rows], count=n)


def _grouped(conn, report, check_id, sql, params, file, column) -> None:
    n = conn.execute(sa.text(f"SELECT COUNT(*) FROM ({sql}) g"), params).scalar()
    if n:
        order = "line" if file else "appointment_id"
        rows = _rows(conn, f"SELECT * FROM ({sql}) g ORDER BY {order} LIMIT {MAX_EXAMPLES}", **params)
        report.add(check_id, [_example(r, file, column) for r in rows], count=n)


def roster_outside(appts: pd.DataFrame, hours: pd.DataFrame) -> pd.DataFrame:
    """Appointments (with local_weekday/local_start/local_end, and local_date) that fit in no
    roster block of their physio holding on their day (valid_from .. valid_to, when ``hours``
    has them); physios without any roster row are skipped. Vectorised (merge), no row loop."""
    if appts.empty or hours.empty:
        return appts.iloc[0:0]
    a = appts[appts["physio_id"].notna() & appts["local_weekday"].notna()].copy()
    h = hours.astype({"physio_id": "int64", "weekday": "int64"})
    a = a[a["physio_id"].astype("int64").isin(h["physio_id"])]
    if a.empty:
        return a
    a["_k"] = np.arange(len(a))
    dated = "valid_from" in h.columns and "local_date" in a.columns
    m = a[["_k", "physio_id", "local_weekday", "local_start", "local_end"] + (["local_date"] if dated else [])].astype(
        {"physio_id": "int64", "local_weekday": "int64"}).merge(
        h, left_on=["physio_id", "local_weekday"], right_on=["physio_id", "weekday"], how="inner")
    fits = (m["start_time"].astype(str) <= m["local_start"].astype(str)) & (m["local_end"].astype(str) <= m["end_time"].astype(str))
    if dated:
        day, first, last = _day_text(m["local_date"]), _day_text(m["valid_from"]), _day_text(m["valid_to"])
        fits &= (first.isna() | (first <= day)).astype(bool) & (last.isna() | (last >= day)).astype(bool)
    inside = set(m.loc[fits, "_k"])
    return a[~a["_k"].isin(inside)].drop(columns="_k")


def _day_text(values: pd.Series) -> pd.Series:
    """Dates (text, date objects or missing) as 'YYYY-MM-DD' text or None, for comparing."""
    return values.map(lambda v: None if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v)[:10])
