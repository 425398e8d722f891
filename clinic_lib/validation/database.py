"""validate_db: the whole database."""
from __future__ import annotations

import datetime as dt
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import sqlalchemy as sa

from clinic_lib.core import db
from clinic_lib.core.config import get_settings
from clinic_lib.core.roster import as_frame as roster_frame
from clinic_lib.core.roster import read_blocks
from clinic_lib.core.timeutil import ISO_FORMAT
from clinic_lib.validation.checks import DB
from clinic_lib.validation.report import MAX_EXAMPLES, Report, _could_not_run, _finish
from clinic_lib.validation.sql import (
    _CANONICAL,
    APPOINTMENT_ROW_CHECKS,
    DB_ONLY_APPOINTMENT_CHECKS,
    _date_param,
    _require_schema,
    _row_checks,
    _rows,
    payment_max_factor,
    roster_outside,
)
from clinic_lib.validation.stage import _strftime
from clinic_lib.validation.values import email_ok, phone_not_scientific, phone_ok


def _db_contacts(conn, out: Report) -> None:
    """patient.phone_scientific, patient.phone_invalid and patient.email_invalid over the whole
    table (vectorised, see phones.possible_or_empty; grouping the shapes in SQL is slower)."""
    cursor = conn.connection.cursor()  # the DB-API cursor: plain tuples, no Row objects for 60k rows
    try:
        cursor.execute("SELECT patient_id, phone, email FROM patients WHERE phone IS NOT NULL OR email IS NOT NULL")
        rows = cursor.fetchall()
    finally:
        cursor.close()
    ids, phone_values, emails = (list(c) for c in zip(*rows)) if rows else ([], [], [])
    p = pd.DataFrame({"patient_id": ids, "phone": phone_values, "email": emails}, dtype=object)
    for check_id, column, ok in (("patient.phone_scientific", "phone", phone_not_scientific),
                                 ("patient.phone_invalid", "phone", phone_ok),
                                 ("patient.email_invalid", "email", email_ok)):
        wrong = p[~ok(p[column])] if len(p) else p
        if len(wrong):
            out.add(check_id, [{"patient_id": r.patient_id, "value": getattr(r, column)}
                               for r in wrong.sort_values("patient_id").head(MAX_EXAMPLES).itertuples()],
                    count=len(wrong))


def _enforced(conn) -> set[str]:
    """Names of the constraints and triggers the database enforces (validated ones on Postgres)."""
    if db.is_sqlite(conn):
        names = set()
        for (sql,) in conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND sql IS NOT NULL"):
            names |= set(re.findall(r"CONSTRAINT\s+\"?(\w+)", sql))
            if "PRIMARY KEY" in sql.upper():
                table = re.match(r"\s*CREATE\s+TABLE\s+\"?(\w+)", sql, re.I)
                if table:
                    names.add(f"pk_{table.group(1)}")
        names |= {n for (n,) in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        return names
    names = {n for (n,) in conn.exec_driver_sql("SELECT conname FROM pg_constraint WHERE convalidated")}
    names |= {f"pk_{t}" for (t,) in conn.exec_driver_sql(
        "SELECT conrelid::regclass::text FROM pg_constraint WHERE contype = 'p'")}
    names |= {f"fk_{t}_{c}" for t, c in conn.exec_driver_sql("""
        SELECT c.conrelid::regclass::text, a.attname FROM pg_constraint c
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)
        WHERE c.contype = 'f' AND c.convalidated""")}
    names |= {n for (n,) in conn.exec_driver_sql("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgenabled <> 'D'")}
    return names


def _db_tasks(report: Report, enforced: set[str], sqlite: bool, params: dict, today: str, tz,
              full: bool = False) -> list:
    """Independent units of work, each run on its own connection (in parallel on SQLite)."""
    def trusted(names) -> bool:
        return bool(names) and all(n in enforced for n in names)

    skipped: list[str] = []

    def keep(check_id, names):
        if trusted(names):
            skipped.append(f"{check_id} ({', '.join(names)})")
            return False
        return True

    horizon = _instant_param_for(sqlite, "horizon")
    row_checks = []
    for cid, cond, col, k in APPOINTMENT_ROW_CHECKS + DB_ONLY_APPOINTMENT_CHECKS:
        if cid == "time.outcome_in_future":  # only appointments from yesterday on can be in the future
            cond = f"a.local_date >= {_date_param_for(sqlite, 'yesterday')} AND " + cond
        if keep(cid, k):
            row_checks.append((cid, cond.format(horizon=horizon), col, k))
    if sqlite and full:
        for col in ("appt_start", "appt_end", "booked_at"):
            row_checks.append(("timestamp.format", f"a.{col} NOT GLOB {_CANONICAL}", col, ()))
        row_checks.append(("timestamp.format", f"a.canceled_at IS NOT NULL AND a.canceled_at NOT GLOB {_CANONICAL}",
                           "canceled_at", ()))
    tasks = []

    def appointment_rows(conn, out: Report):
        # one COUNT per condition (a plain scan each is cheaper than one scan evaluating all of them),
        # the condition on local_date uses its index
        for check in row_checks:
            _row_checks(conn, out, "appointments a", [check], None, params)

    for check_id, col in (("overlap.physio", "physio_id"), ("overlap.patient", "patient_id")):
        def overlap(conn, out: Report, check_id=check_id, col=col):
            # x overlaps a y that starts at or after x's start: one indexed range probe per row
            exists = f"""EXISTS (SELECT 1 FROM appointments y WHERE y.{col} = x.{col} AND y.status <> 'canceled'
                            AND y.appt_start >= x.appt_start AND y.appt_start < x.appt_end
                            AND y.appointment_id <> x.appointment_id)"""
            hint = ""
            if sqlite and conn.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?",
                                               (f"ix_appointments_{col[:-3]}_start",)).first():
                hint = f" INDEXED BY ix_appointments_{col[:-3]}_start"  # scan the covering index, not the table
            n = conn.execute(sa.text(f"SELECT COUNT(*) FROM appointments x{hint} WHERE x.status <> 'canceled' "
                                     f"AND x.{col} IS NOT NULL AND {exists}")).scalar()
            if n:
                rows = _rows(conn, f"""
                    SELECT x.appointment_id, x.{col}, x.appt_start, x.appt_end, y.appointment_id AS other_appointment_id,
                           y.appt_start AS other_start, y.appt_end AS other_end
                    FROM appointments x JOIN appointments y ON y.{col} = x.{col} AND y.status <> 'canceled'
                     AND y.appt_start >= x.appt_start AND y.appt_start < x.appt_end AND y.appointment_id <> x.appointment_id
                    WHERE x.status <> 'canceled' ORDER BY x.appointment_id, y.appointment_id LIMIT {MAX_EXAMPLES}""")
                out.add(check_id, rows, count=n)
        tasks.append(overlap)
    tasks.append(appointment_rows)

    orphan_defs = [("orphan.patient", "appointments", "appointment_id", "patient_id", "patients"),
                   ("orphan.physio", "appointments", "appointment_id", "physio_id", "physios"),
                   ("orphan.physio", "physio_hours", "weekday", "physio_id", "physios")]
    check_pay_orphans = sqlite or keep("orphan.appointment", ("fk_payments_appointment_id",))
    orphan_defs = [d for d in orphan_defs if sqlite or keep(d[0], (f"fk_{d[1]}_{d[3]}",))]

    def orphans(conn, out: Report):
        for check_id, child, key, col, parent in orphan_defs:
            # distinct referenced ids first (an index-only scan), then the anti-join on the few
            n = conn.execute(sa.text(f"""SELECT COUNT(*) FROM {child} c WHERE c.{col} IN (
                SELECT r.{col} FROM (SELECT DISTINCT {col} FROM {child} WHERE {col} IS NOT NULL) r
                WHERE NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.{col} = r.{col}))""")).scalar()
            if n:
                rows = _rows(conn, f"""SELECT c.{key}, c.{col} AS value FROM {child} c
                    WHERE c.{col} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.{col} = c.{col})
                    ORDER BY c.{key} LIMIT {MAX_EXAMPLES}""")
                out.add(check_id, [{"table": child, **r} for r in rows], count=n)
    tasks.append(orphans)

    pay_skip = frozenset(c for c, k in (("payment.not_completed", ("trg_payments_need_completed_insert",
                                                                    "trg_payments_need_completed_update",
                                                                    "trg_appointments_paid_stays_completed")
                                          if sqlite else ("trg_payments_need_completed",
                                                          "trg_appointments_paid_stays_completed")),)
                         if not keep(c, k))

    def payments(conn, out: Report):
        _db_payment_checks(conn, out, params, pay_skip, check_pay_orphans)
    tasks.append(payments)

    simple = [("payment.negative", "payments", "payment_id", "amount_cents", "amount_cents < 0",
               ("ck_payments_amount_non_negative",)),
              ("value.choice", "payments", "payment_id", "method",
               "method IS NULL OR method NOT IN ('cash', 'card', 'transfer', 'insurance')", ("ck_payments_method",)),
              ("value.choice", "patients", "patient_id", "gender",
               "gender IS NOT NULL AND gender NOT IN ('F', 'M', 'X')", ("ck_patients_gender",)),
              ("flag.invalid", "patients", "patient_id", "consent_form_received",
               "consent_form_received IS NULL OR consent_form_received NOT IN (0, 1)",
               ("ck_patients_consent_form_received_flag",)),
              ("flag.invalid", "patients", "patient_id", "reminder_consent",
               "reminder_consent IS NULL OR reminder_consent NOT IN (0, 1)", ("ck_patients_reminder_consent_flag",)),
              ("flag.invalid", "physios", "physio_id", "active", "active IS NULL OR active NOT IN (0, 1)",
               ("ck_physios_active_flag",))]
    for table, key in (("patients", "patient_id"), ("physios", "physio_id"), ("appointments", "appointment_id"),
                       ("payments", "payment_id")):
        if keep("id.duplicate", (f"pk_{table}",)):
            simple.append(("id.duplicate", table, key, key,
                           f"{key} IN (SELECT {key} FROM {table} GROUP BY {key} HAVING COUNT(*) > 1)", ()))
    simple = [s for s in simple if keep(s[0], s[5])]
    if sqlite and full:
        for table, key, col in (("payments", "payment_id", "paid_at"), ("patients", "patient_id", "created_at")):
            simple.append(("timestamp.format", table, key, col, f"{col} NOT GLOB {_CANONICAL}", ()))

    def small_tables(conn, out: Report):
        for check_id, table, key, col, cond, _ in simple:
            n = conn.execute(sa.text(f"SELECT COUNT(*) FROM {table} WHERE {cond}")).scalar()
            if n:
                rows = _rows(conn, f"SELECT {key}, {col} AS value FROM {table} WHERE {cond} ORDER BY {key} "
                                   f"LIMIT {MAX_EXAMPLES}")
                out.add(check_id, [{"table": table, "column": col, **r} for r in rows], count=n)
        _db_contacts(conn, out)
    tasks.append(small_tables)

    def inactive_physios(conn, out: Report):
        # booked after the physio's last day: the day their roster ends (roster history), or, for a
        # physio whose roster never ended there, today. The few leavers first, so that the
        # appointments are read by the local_date index from the earliest such day on.
        last_days = conn.execute(sa.text("""SELECT p.physio_id,
                (SELECT MAX(h.valid_to) FROM physio_hours h WHERE h.physio_id = p.physio_id
                 HAVING COUNT(*) = COUNT(h.valid_to)) FROM physios p WHERE p.active = 0""")).all()
        if not last_days:
            return
        yesterday = (dt.date.fromisoformat(today) - dt.timedelta(days=1)).isoformat()
        first = min([str(last)[:10] for _, last in last_days if last is not None] + [yesterday])
        ids = ", ".join(str(int(p)) for p, _ in last_days)
        cond = f"""a.status = 'booked' AND a.local_date > {_date_param_for(sqlite, 'first')}
                   AND a.physio_id IN ({ids})
                   AND a.local_date > COALESCE((SELECT MAX(h.valid_to) FROM physio_hours h
                       WHERE h.physio_id = a.physio_id HAVING COUNT(*) = COUNT(h.valid_to)),
                       {_date_param_for(sqlite, 'yesterday')})"""
        params = {"first": first, "yesterday": yesterday}
        n = conn.execute(sa.text(f"SELECT COUNT(*) FROM appointments a WHERE {cond}"), params).scalar()
        if n:
            rows = _rows(conn, f"""SELECT a.appointment_id, a.physio_id AS value, a.local_date FROM appointments a
                WHERE {cond} ORDER BY a.appointment_id LIMIT {MAX_EXAMPLES}""", **params)
            out.add("physio.inactive", [{"table": "appointments", "column": "physio_id", **r} for r in rows], count=n)
    tasks.append(inactive_physios)

    def roster(conn, out: Report):
        hours = roster_frame(read_blocks(conn))
        if hours.empty:
            return
        a = pd.read_sql(sa.text(f"""SELECT appointment_id, physio_id, appt_start, appt_end, local_date
            FROM appointments WHERE local_date >= {_date_param(conn, 'today')} AND status <> 'canceled'
            AND physio_id IS NOT NULL"""), conn, params={"today": today})
        if a.empty:
            return
        start = pd.to_datetime(a["appt_start"], utc=True, errors="coerce", format="ISO8601").dt.tz_convert(tz)
        end = pd.to_datetime(a["appt_end"], utc=True, errors="coerce", format="ISO8601").dt.tz_convert(tz)
        a = a.assign(local_weekday=start.dt.day_of_week.astype("Int64"), local_start=_strftime(start, "%H:%M"),
                     local_end=_strftime(end, "%H:%M").where(_strftime(end, "%Y-%m-%d") == _strftime(start, "%Y-%m-%d"),
                                                             "24:00"))
        bad = roster_outside(a, hours)
        if len(bad):
            out.add("roster.outside", [{"appointment_id": r.appointment_id, "physio_id": r.physio_id,
                                        "local_date": r.local_date, "local_start": r.local_start,
                                        "local_end": r.local_end} for r in bad.sort_values("appointment_id")
                                       .head(MAX_EXAMPLES).itertuples()], count=len(bad))
    tasks.append(roster)
    if skipped:
        report.notes.append("skipped, enforced by the database: " + "; ".join(skipped))
    return tasks


def _date_param_for(sqlite: bool, name: str) -> str:
    return f":{name}" if sqlite else f"CAST(:{name} AS DATE)"


def _db_payment_checks(conn, out: Report, params: dict, skip: frozenset, orphans: bool) -> None:
    """All payment checks of the whole database, counted per payment.

    One pass joins each payment to its appointment (covering index on payments, primary-key probe);
    the appointments with several payments (few) go to a TEMP table for totals and duplicates, so
    no pass groups the whole table by appointment and joins it again.
    """
    conds = [("orphan.appointment", "a.appointment_id IS NULL", orphans),
             ("payment.not_completed", "a.status <> 'completed'", "payment.not_completed" not in skip),
             ("payment.before_appointment", "p.paid_at < a.appt_start", True),
             ("payment.too_much", "p.amount_cents > :factor * a.price_estimate_cents", True)]
    conds = [(cid, cond) for cid, cond, run in conds if run]
    sums = ", ".join(f"SUM(CASE WHEN {cond} THEN 1 ELSE 0 END)" for _, cond in conds)
    joined = "payments p LEFT JOIN appointments a ON a.appointment_id = p.appointment_id"
    counts = dict(zip([c for c, _ in conds], conn.execute(sa.text(f"SELECT {sums} FROM {joined}"), params).one()))
    conn.exec_driver_sql("""CREATE TEMP TABLE vmulti AS SELECT appointment_id, SUM(amount_cents) AS total_cents,
                            COUNT(*) AS n_payments FROM payments GROUP BY appointment_id HAVING COUNT(*) > 1""")
    # too much: single payments above the limit (counted above, minus those of multi-payment appointments)
    # plus appointments whose several payments add up above it
    multi_hits = conn.execute(sa.text("""
        SELECT COUNT(*) FROM vmulti m JOIN payments p ON p.appointment_id = m.appointment_id
        JOIN appointments a ON a.appointment_id = m.appointment_id
        WHERE p.amount_cents > :factor * a.price_estimate_cents"""), params).scalar()
    multi_over = conn.execute(sa.text("""
        SELECT COUNT(*) FROM vmulti m JOIN payments p ON p.appointment_id = m.appointment_id
        JOIN appointments a ON a.appointment_id = m.appointment_id
        WHERE m.total_cents > :factor * a.price_estimate_cents"""), params).scalar()
    counts["payment.too_much"] = (counts["payment.too_much"] or 0) - multi_hits + multi_over
    for check_id, cond in conds:
        if check_id == "payment.too_much":
            cond = "(p.amount_cents > :factor * a.price_estimate_cents OR m.total_cents > :factor * a.price_estimate_cents)"
        if counts.get(check_id):
            rows = _rows(conn, f"""
                SELECT p.payment_id, p.appointment_id, p.amount_cents, p.paid_at, a.status, a.appt_start,
                       a.price_estimate_cents, m.total_cents AS total_cents_of_appointment
                FROM {joined} LEFT JOIN vmulti m ON m.appointment_id = p.appointment_id
                WHERE {cond} ORDER BY p.payment_id LIMIT {MAX_EXAMPLES}""", **params)
            out.add(check_id, rows, count=counts[check_id])
    dup = """SELECT p.appointment_id, p.amount_cents, p.paid_at, COUNT(*) AS n_payments,
                    MIN(p.payment_id) AS payment_id, MAX(p.payment_id) AS other_payment_id
             FROM vmulti m JOIN payments p ON p.appointment_id = m.appointment_id
             GROUP BY p.appointment_id, p.amount_cents, p.paid_at HAVING COUNT(*) > 1"""
    rows = _rows(conn, f"SELECT * FROM ({dup}) d ORDER BY appointment_id")
    if rows:
        out.add("payment.duplicate", rows[:MAX_EXAMPLES], count=len(rows))


def _instant_param_for(sqlite: bool, name: str) -> str:
    return f":{name}" if sqlite else f"CAST(:{name} AS TIMESTAMP WITH TIME ZONE)"


def validate_db(engine: sa.Engine | None = None, record: bool = True, full: bool = False,
                now: dt.datetime | None = None, workers: int | None = None) -> Report:
    """Check the whole database (set-based SQL); ``full=True`` also re-checks what constraints enforce."""
    t0 = time.perf_counter()
    settings = get_settings()
    engine = engine or db.make_engine()
    report = Report(DB, None, source=engine.url.render_as_string(hide_password=True))
    now = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    with _could_not_run(engine, report, record):
        _require_schema(engine)
        with engine.connect() as conn:
            enforced = set() if full else _enforced(conn)
            sqlite = db.is_sqlite(conn)
        local_today = now.astimezone(settings.clinic_tz).date()
        today = local_today.isoformat()
        params = {"horizon": now.strftime(ISO_FORMAT), "factor": payment_max_factor(),
                  "yesterday": (local_today - dt.timedelta(days=1)).isoformat()}
        tasks = _db_tasks(report, enforced, sqlite, params, today, settings.clinic_tz, full)
        # the longest first, so two workers finish together
        rank = {"payments": 0, "overlap": 1, "small_tables": 2, "appointment_rows": 3, "roster": 4, "orphans": 5}
        tasks.sort(key=lambda t: rank.get(t.__name__, 9))
        partials = [Report(DB) for _ in tasks]

        def run(i):
            with engine.connect() as conn:
                try:
                    tasks[i](conn, partials[i])
                finally:
                    conn.rollback()  # read-only: nothing to commit

        n_workers = workers or (2 if db.sqlite_file(engine) else 1)
        if n_workers > 1:
            # sqlite3 releases the GIL while a query runs: independent checks use both cores
            with ThreadPoolExecutor(max_workers=n_workers) as pool:
                list(pool.map(run, range(len(tasks))))
        else:
            for i in range(len(tasks)):
                run(i)
        for part in partials:
            for c in part.failed:
                report.add(c.id, c.examples, count=c.count)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return _finish(report, engine, t0, record, settings.validation_dir / f"validation_db_{stamp}.json")
