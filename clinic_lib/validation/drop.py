"""validate_drop: a day's drop against the database, before anything is written."""
from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import sqlalchemy as sa

from clinic_lib.core import db
from clinic_lib.core.clinic_days import is_clinic_day
from clinic_lib.core.config import get_settings
from clinic_lib.core.errors import CannotRun
from clinic_lib.core.roster import apply_drop, read_blocks
from clinic_lib.core.roster import as_frame as roster_frame
from clinic_lib.core.timeutil import local_day_bounds_utc, parse_day
from clinic_lib.ingest.drop_format import DROP_FILES
from clinic_lib.ingest.refresh import VERSIONED_TABLES, newer_in_database
from clinic_lib.validation.checks import DROP, NO_ROWS_FOR_DAY
from clinic_lib.validation.read import _read_file
from clinic_lib.validation.report import MAX_EXAMPLES, Report, _could_not_run, _finish
from clinic_lib.validation.sql import (
    APPOINTMENT_ROW_CHECKS,
    _date_param,
    _example,
    _grouped,
    _instant_param,
    _require_schema,
    _row_checks,
    _rows,
    payment_max_factor,
    roster_outside,
)
from clinic_lib.validation.stage import _ids, _stage, _stage_frames
from clinic_lib.validation.values import _MEMO, ACTIVE, _check_values, _Cols, _strip


def validate_drop(day, engine: sa.Engine | None = None, folder: Path | None = None, record: bool = True,
                  allow_empty: bool = False) -> Report:
    """Check the drop of clinic-local day ``day`` against the database; nothing is written but the log."""
    t0 = time.perf_counter()
    settings = get_settings()
    day = parse_day(day)
    folder = Path(folder) if folder else settings.drop_dir(day)
    engine = engine or db.make_engine()
    report = Report(DROP, day, source=str(folder))
    with _could_not_run(engine, report, record):
        if not folder.is_dir():
            raise CannotRun(f"the drop folder {folder} is missing: nothing to validate for {day}")
        _require_schema(engine)
        _validate_drop(report, folder, engine, settings.clinic_tz, day, allow_empty)
    return _finish(report, engine, t0, record, settings.validation_dir / f"validation_{day.isoformat()}.json")


def _validate_drop(report: Report, folder: Path, engine, tz, day: dt.date, allow_empty: bool) -> None:
    frames = {}
    _MEMO.d = {}
    try:
        for table in list(DROP_FILES) + ["physio_hours"]:
            frame = _read_file(folder / f"{table}.csv", table, report)
            if frame is not None:
                frames[table] = _Cols(frame)
                _check_values(table, frames[table], report)
        staged = _stage_frames(frames, tz, day, report)
    finally:
        _MEMO.d = None
    day_text = day.isoformat()
    n_day = 0
    if "appointments" in staged:
        n_day += int((staged["appointments"]["local_date"] == day_text).sum())
    if "payments" in staged:
        n_day += int((staged["payments"]["paid_date"] == day_text).sum())
    if n_day == 0 and not allow_empty and "appointments" in frames and "payments" in frames \
            and is_clinic_day(engine, day):
        # the refresh's rule and words (refresh_day): an empty export of a working day is more
        # often a broken export than a quiet day
        report.add("drop.no_rows_for_day", [{"file": "appointments.csv", "day": day_text,
                                             "problem": NO_ROWS_FOR_DAY.format(day=day_text)}])
    day_start, day_end = local_day_bounds_utc(day, tz)
    params = {"day": day_text, "horizon": day_end, "day_start": day_start, "day_end": day_end,
              "factor": payment_max_factor()}
    with engine.connect() as conn:
        trans = conn.begin()
        try:
            # Rows a later drop already wrote are left alone by the refresh (source_day): check the
            # drop as the refresh will apply it, so re-running an old day is not a false alarm.
            for table in VERSIONED_TABLES:
                if table in staged and len(staged[table]):
                    frame = staged[table]
                    staged[table] = frame[~newer_in_database(conn, table, frame, day_text).to_numpy()]
            _drop_sql_checks(conn, report, staged, params)
            blocks = read_blocks(conn)
        finally:
            trans.rollback()  # the TEMP tables go with it: nothing of the drop stays in the database
    if "appointments" in staged:
        # the roster as the refresh will leave it: the drop's hours from this day on, and none
        # after this day for the physios it marks as gone (roster.py)
        hours = staged.get("physio_hours")
        if hours is not None:
            hours = hours.dropna(subset=["physio_id", "weekday"])
        blocks.update(apply_drop(blocks, day, hours, _leavers(frames.get("physios"))))
        hours = roster_frame(blocks)
        a = staged["appointments"]
        out = roster_outside(a[a["status"].isin(ACTIVE) & (a["local_date"].astype(str) >= day_text)], hours)
        if len(out):
            report.add("roster.outside", [
                {"file": "appointments.csv", "line": int(r.line), "column": "appt_start",
                 "appointment_id": r.appointment_id, "physio_id": r.physio_id, "local_date": r.local_date,
                 "local_start": r.local_start, "local_end": r.local_end} for r in out.head(MAX_EXAMPLES).itertuples()],
                count=len(out))


def _leavers(physios) -> list[int]:
    """The physios a drop's physios.csv marks inactive."""
    if physios is None or "active" not in physios:
        return []
    ids, active = _ids(physios, "physio_id"), _strip(physios["active"])
    return [int(i) for i in ids[(active == "0") & ids.notna()]]


def _drop_sql_checks(conn, report: Report, staged: dict, params: dict) -> None:
    names = {"patients": "vstg_patients", "physios": "vstg_physios", "physio_hours": "vstg_hours",
             "appointments": "vstg_appointments", "payments": "vstg_payments"}
    for table, name in names.items():
        _stage(conn, name, table, staged.get(table))
    for name, col in (("vstg_patients", "patient_id"), ("vstg_physios", "physio_id"), ("vstg_hours", "physio_id"),
                      ("vstg_appointments", "appointment_id"), ("vstg_appointments", "physio_id, appt_start"),
                      ("vstg_appointments", "patient_id, appt_start"), ("vstg_payments", "payment_id"),
                      ("vstg_payments", "appointment_id")):
        conn.exec_driver_sql(f"CREATE INDEX {name}_{col.split(',')[0]} ON {name} ({col})")
    sqlite = db.is_sqlite(conn)
    day = _date_param(conn, "day")
    horizon = _instant_param(conn, "horizon")
    have_appts, have_pays = "appointments" in staged, "payments" in staged

    if have_appts:
        checks = [(cid, cond.format(horizon=horizon), col, k) for cid, cond, col, k in APPOINTMENT_ROW_CHECKS]
        _row_checks(conn, report, "vstg_appointments a", checks, "appointments.csv", params, extra_cols="a.line, ")
        # orphans (unknown in the drop and in the database)
        for check_id, col, parent, stg in (("orphan.patient", "patient_id", "patients", "vstg_patients"),
                                           ("orphan.physio", "physio_id", "physios", "vstg_physios")):
            rows = _rows(conn, f"""
                SELECT a.line, a.appointment_id, a.{col} AS value FROM vstg_appointments a
                WHERE a.{col} IS NOT NULL
                  AND NOT EXISTS (SELECT 1 FROM {stg} s WHERE s.{col} = a.{col})
                  AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.{col} = a.{col})
                ORDER BY a.line""")
            if rows:
                report.add(check_id, [_example(r, "appointments.csv", col) for r in rows])
        # a booking after D with a physio who has left, as the drop says or else the database
        rows = _rows(conn, f"""
            SELECT a.line, a.appointment_id, a.physio_id AS value, a.local_date FROM vstg_appointments a
            WHERE a.status = 'booked' AND a.local_date > {day} AND a.physio_id IS NOT NULL
              AND COALESCE((SELECT s.active FROM vstg_physios s WHERE s.physio_id = a.physio_id),
                           (SELECT p.active FROM physios p WHERE p.physio_id = a.physio_id)) = 0
            ORDER BY a.line""", **params)
        if rows:
            report.add("physio.inactive", [_example(r, "appointments.csv", "physio_id") for r in rows])
        # ids the database uses for something else
        rows = _rows(conn, """
            SELECT s.line, s.appointment_id, s.patient_id AS value, a.patient_id AS patient_id_in_database
            FROM vstg_appointments s JOIN appointments a ON a.appointment_id = s.appointment_id
            WHERE s.patient_id IS NOT NULL AND a.patient_id <> s.patient_id ORDER BY s.line""")
        if rows:
            report.add("id.conflict_with_db", [_example(r, "appointments.csv", "patient_id") for r in rows])
    if "physio_hours" in staged:
        rows = _rows(conn, """
            SELECT h.line, h.physio_id AS value FROM vstg_hours h
            WHERE NOT EXISTS (SELECT 1 FROM vstg_physios s WHERE s.physio_id = h.physio_id)
              AND NOT EXISTS (SELECT 1 FROM physios p WHERE p.physio_id = h.physio_id) ORDER BY h.line""")
        if rows:
            report.add("orphan.physio", [_example(r, "physio_hours.csv", "physio_id") for r in rows])
    if have_pays:
        rows = _rows(conn, """
            SELECT s.line, s.payment_id, s.appointment_id AS value, p.appointment_id AS appointment_id_in_database
            FROM vstg_payments s JOIN payments p ON p.payment_id = s.payment_id
            WHERE s.appointment_id IS NOT NULL AND p.appointment_id <> s.appointment_id ORDER BY s.line""")
        if rows:
            report.add("id.conflict_with_db", [_example(r, "payments.csv", "appointment_id") for r in rows])
        rows = _rows(conn, f"""
            SELECT s.line, s.payment_id, s.appointment_id AS value FROM vstg_payments s
            WHERE s.appointment_id IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM vstg_appointments a WHERE a.appointment_id = s.appointment_id)
              AND NOT EXISTS (SELECT 1 FROM appointments a WHERE a.appointment_id = s.appointment_id
                              AND a.local_date <> {day}) ORDER BY s.line""", **params)
        if rows:
            report.add("orphan.appointment", [_example(r, "payments.csv", "appointment_id") for r in rows])
    # payments in the database that would lose their appointment: the drop removes it from day D
    if have_appts:
        rows = _rows(conn, f"""
            SELECT p.payment_id, p.appointment_id, a.local_date FROM payments p
            JOIN appointments a ON a.appointment_id = p.appointment_id
            WHERE a.local_date = {day} AND p.paid_date <> {day}
              AND NOT EXISTS (SELECT 1 FROM vstg_appointments s WHERE s.appointment_id = a.appointment_id)
            ORDER BY p.payment_id""", **params)
        if rows:
            report.add("orphan.appointment", [
                {"file": "appointments.csv", "line": None, "column": "appointment_id", "payment_id": r["payment_id"],
                 "value": r["appointment_id"], "problem": "the drop removes this appointment of D but the "
                 "database holds a payment of another day for it"} for r in rows])

    # the context of the payment checks: the drop's appointments, and the database's that the
    # drop's payments are for, as they will be after the refresh (day D's are replaced)
    conn.execute(sa.text(f"""
        CREATE TEMP TABLE vctx_appointments AS
        SELECT appointment_id, patient_id, physio_id, appt_start, appt_end, status, price_estimate_cents,
               local_date, line, 1 AS from_drop FROM vstg_appointments
        UNION ALL
        SELECT a.appointment_id, a.patient_id, a.physio_id, a.appt_start, a.appt_end, a.status,
               a.price_estimate_cents, a.local_date, NULL, 0 FROM appointments a
        WHERE a.appointment_id IN (SELECT appointment_id FROM vstg_payments) AND a.local_date <> {day}
          AND NOT EXISTS (SELECT 1 FROM vstg_appointments s WHERE s.appointment_id = a.appointment_id)"""), params)
    conn.exec_driver_sql("CREATE INDEX vctx_a_id ON vctx_appointments (appointment_id)")
    conn.execute(sa.text(f"""
        CREATE TEMP TABLE vctx_payments AS
        SELECT payment_id, appointment_id, amount_cents, paid_at, line, 1 AS from_drop FROM vstg_payments
        UNION ALL
        SELECT p.payment_id, p.appointment_id, p.amount_cents, p.paid_at, NULL, 0 FROM payments p
        WHERE p.appointment_id IN (SELECT appointment_id FROM vstg_appointments
                                   UNION SELECT appointment_id FROM vstg_payments)
          AND p.paid_date <> {day}
          AND NOT EXISTS (SELECT 1 FROM vstg_payments s WHERE s.payment_id = p.payment_id)"""), params)
    if not sqlite:
        conn.exec_driver_sql("ANALYZE vctx_appointments")

    if have_appts:
        # Each drop appointment against the drop's others and against the database's that start on
        # its previous, same or next local date (one range probe of the database's per-day index
        # per appointment: less work than copying the database's rows of those dates into a
        # temporary table, indexing and probing it). The
        # database's rows that the refresh replaces (day D's, and those in the drop) are left out.
        active = "(" + ", ".join(f"'{status}'" for status in ACTIVE) + ")"
        day_start, day_end = _instant_param(conn, "day_start"), _instant_param(conn, "day_end")
        for check_id, col in (("overlap.physio", "physio_id"), ("overlap.patient", "patient_id")):
            pair = f"""x.line, x.appointment_id, x.{col}, x.appt_start, x.appt_end,
                       y.appointment_id AS other_appointment_id, y.appt_start AS other_start,
                       y.appt_end AS other_end"""
            probe = f"""y.{col} = x.{col} AND y.appt_start >= x.probe_start AND y.appt_start < x.probe_end
                        AND x.appt_start < y.appt_end"""
            rows = _rows(conn, f"""
                SELECT {pair}, 1 AS other_in_drop
                FROM vstg_appointments x JOIN vstg_appointments y ON {probe} AND x.appointment_id < y.appointment_id
                WHERE x.status IN {active} AND y.status IN {active}
                UNION ALL
                SELECT {pair}, 0 AS other_in_drop
                FROM vstg_appointments x JOIN appointments y ON {probe}
                WHERE x.status IN {active} AND y.status IN {active}
                  AND NOT (y.appt_start >= {day_start} AND y.appt_start < {day_end})
                  AND NOT EXISTS (SELECT 1 FROM vstg_appointments s WHERE s.appointment_id = y.appointment_id)
                ORDER BY line, other_appointment_id""", **params)
            if rows:
                report.add(check_id, [_example(r, "appointments.csv", "appt_start") for r in rows])
    if have_pays or have_appts:
        _payment_checks(conn, report, "vctx_payments", "vctx_appointments", params,
                        touched="(p.from_drop = 1 OR a.from_drop = 1)", file="payments.csv")


def _payment_checks(conn, report: Report, pays: str, appts: str, params: dict, touched: str = "1 = 1",
                    file: str | None = None, skip: frozenset = frozenset()) -> None:
    """Payments against their appointments: status, date, amount, duplicates (both scopes)."""
    in_drop = file is not None
    line = "p.line, " if in_drop else ""
    checks = [("payment.not_completed", "a.status <> 'completed'", "appointment_id"),
              ("payment.before_appointment", "p.paid_at < a.appt_start", "paid_at")]
    checks = [c for c in checks if c[0] not in skip]
    if checks:
        sums = ", ".join(f"SUM(CASE WHEN {cond} THEN 1 ELSE 0 END)" for _, cond, _ in checks)
        counts = conn.execute(sa.text(f"SELECT {sums} FROM {pays} p JOIN {appts} a "
                                      f"ON a.appointment_id = p.appointment_id WHERE {touched}"), params).one()
        for (check_id, cond, column), n in zip(checks, counts):
            if n:
                rows = _rows(conn, f"""
                    SELECT {line}p.payment_id, p.appointment_id, p.amount_cents, p.paid_at, a.status, a.appt_start
                    FROM {pays} p JOIN {appts} a ON a.appointment_id = p.appointment_id
                    WHERE {touched} AND {cond} ORDER BY {'p.line, ' if in_drop else ''}p.payment_id
                    LIMIT {MAX_EXAMPLES}""", **params)
                report.add(check_id, [_example(r, file, column) for r in rows], count=n)
    having_touched = "AND (MAX(p.from_drop) = 1 OR MAX(a.from_drop) = 1)" if in_drop else ""
    sql = f"""
        SELECT {'MIN(p.line) AS line, ' if in_drop else ''}p.appointment_id, a.price_estimate_cents,
               SUM(p.amount_cents) AS total_cents, COUNT(*) AS n_payments
        FROM {pays} p JOIN {appts} a ON a.appointment_id = p.appointment_id
        WHERE a.price_estimate_cents IS NOT NULL
        GROUP BY p.appointment_id, a.price_estimate_cents
        HAVING SUM(p.amount_cents) > :factor * a.price_estimate_cents {having_touched}"""
    _grouped(conn, report, "payment.too_much", sql, params, file, "amount")
    sql = f"""
        SELECT {'MAX(p.line) AS line, ' if in_drop else ''}p.appointment_id, p.amount_cents, p.paid_at,
               COUNT(*) AS n_payments, MIN(p.payment_id) AS payment_id, MAX(p.payment_id) AS other_payment_id
        FROM {pays} p {'' if not in_drop else f'LEFT JOIN {appts} a ON a.appointment_id = p.appointment_id'}
        GROUP BY p.appointment_id, p.amount_cents, p.paid_at
        HAVING COUNT(*) > 1 {'AND (MAX(p.from_drop) = 1 OR MAX(a.from_drop) = 1)' if in_drop else ''}"""
    _grouped(conn, report, "payment.duplicate", sql, params, file, "payment_id")
