"""The clinic's KPIs, computed in SQL (the same statements on SQLite and Postgres).

Every KPI is for a *range* of clinic-local days ``start .. end`` (both included; a single day is
``start == end``), optionally for one physio, computed **as of** a snapshot day ``as_of``
(default: today in ``CLINIC_TZ``). Notation used in the docstrings:

- ``R`` = the appointments whose clinic-local date (``appointments.local_date``) lies in the range,
  of the physio if one is chosen, and booked by the end of ``as_of``
  (``booked_at < end of as_of``, so a snapshot of the past does not see later bookings);
- ``attended`` = status ``completed``; ``no-show`` (DNA, "did not attend") = status ``no_show``;
- instants are compared as real elapsed time (UTC), so a rule like "24 h before" is the same
  across a DST change; rosters are clinic-local wall-clock times, so a 23 h or 25 h day has the
  same rostered minutes as any other day with that weekday's roster;
- statuses are the database's current ones (the data keeps no status history); ``as_of`` limits
  bookings (``booked_at``) and payments (``paid_date``) and sets the age of unpaid visits.

Range queries select appointments through ``ix_appointments_local_date`` (a range on
``local_date``), payments through ``ix_payments_appointment_amount_paid``, and patients' other
visits through ``ix_appointments_patient_start``; ``explain(...)`` shows the plan (a test checks
it on SQLite). The outstanding snapshot reads the whole history once (see ``outstanding``). ``frames`` +
``summary_from`` give the same KPIs from per-(day, physio) sums, so a dashboard can change the
physio filter or pick a sub-range without querying again. Money is in integer cents.
"""
from __future__ import annotations

import datetime as dt
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import pandas as pd
import sqlalchemy as sa

from clinic_lib.core import db
from clinic_lib.core.config import get_settings
from clinic_lib.core.timeutil import local_day_bounds_utc, parse_day, today_local

OUTSTANDING_BUCKETS = ("0-30", "31-60", "61-90", "90+")
REBOOK_WINDOW_HOURS = 24
RISK_BUCKETS = ("low", "medium", "high", "not scored")


# --- plumbing -----------------------------------------------------------------------------------

@contextmanager
def _connect(bind):
    """Use a Connection as it is, or open one from an Engine (read only)."""
    if isinstance(bind, sa.Connection):
        yield bind
    else:
        with bind.connect() as conn:
            yield conn


def _secs(conn, expr: str) -> str:
    """SQL for the UTC epoch seconds of a stored instant (exact integers on SQLite)."""
    if db.is_sqlite(conn):
        return f"CAST(strftime('%s', {expr}) AS INTEGER)"
    return f"EXTRACT(EPOCH FROM {expr})"


def _minutes(conn, start: str, end: str) -> str:
    return f"(({_secs(conn, end)} - {_secs(conn, start)}) / 60.0)"


@dataclass(frozen=True)
class Scope:
    """Range, physio and snapshot of a KPI query, normalised."""
    start: dt.date
    end: dt.date
    physio_id: int | None
    as_of: dt.date
    as_of_end: str  # UTC text: the first instant after the as_of day (clinic-local)

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def params(self, **extra) -> dict:
        p = {"start": self.start.isoformat(), "end": self.end.isoformat(),
             "as_of": self.as_of.isoformat(), "as_of_end": self.as_of_end}
        if self.physio_id is not None:
            p["physio_id"] = int(self.physio_id)
        p.update(extra)
        return p

    def physio_sql(self, alias: str = "a") -> str:
        return f" AND {alias}.physio_id = :physio_id" if self.physio_id is not None else ""


def scope(start, end=None, physio_id=None, as_of=None) -> Scope:
    """Normalise the arguments every KPI takes (dates as date or 'YYYY-MM-DD')."""
    settings = get_settings()
    start = parse_day(start)
    end = parse_day(end) if end is not None else start
    if end < start:
        raise ValueError(f"the range ends ({end}) before it starts ({start})")
    as_of = parse_day(as_of) if as_of is not None else today_local(settings.clinic_tz)
    as_of_end = local_day_bounds_utc(as_of, settings.clinic_tz)[1]
    physio_id = None if physio_id in (None, "", "all") else int(physio_id)
    return Scope(start, end, physio_id, as_of, as_of_end)


def previous_period(start, end=None) -> tuple[dt.date, dt.date]:
    """The period a KPI is compared with: for one day, the same weekday a week earlier; for a
    range of n days, the n days just before it."""
    start = parse_day(start)
    end = parse_day(end) if end is not None else start
    n = (end - start).days + 1
    if n == 1:
        d = start - dt.timedelta(days=7)
        return d, d
    return start - dt.timedelta(days=n), start - dt.timedelta(days=1)


def _ratio(num, den):
    return None if not den else num / den


# --- daily counts: one indexed query over the range --------------------------------------------

DAILY_COLUMNS = ["bookings", "attended", "no_shows", "cancellations", "late_cancellations",
                 "early_cancellations", "revenue_estimate_cents", "paid_cents", "booked_minutes",
                 "attended_minutes"]


def _daily_sql(conn, s: Scope, group_physio: bool = False) -> str:
    minutes = _minutes(conn, "r.appt_start", "r.appt_end")
    late = f"({_secs(conn, 'r.appt_start')} - {_secs(conn, 'r.canceled_at')}) < :late_secs"
    key = "r.local_date, r.physio_id" if group_physio else "r.local_date"
    return f"""
    WITH r AS (
        SELECT a.appointment_id, a.physio_id, a.local_date, a.status, a.appt_start, a.appt_end,
               a.canceled_at, a.price_estimate_cents
        FROM appointments a
        WHERE a.local_date >= :start AND a.local_date <= :end
          AND a.booked_at < :as_of_end{s.physio_sql('a')}
    ), pay AS (
        SELECT p.appointment_id, SUM(p.amount_cents) AS paid
        FROM r JOIN payments p ON p.appointment_id = r.appointment_id
        WHERE r.status = 'completed' AND p.paid_date <= :as_of
        GROUP BY p.appointment_id
    )
    SELECT {key},
        COUNT(*) AS bookings,
        SUM(CASE WHEN r.status = 'completed' THEN 1 ELSE 0 END) AS attended,
        SUM(CASE WHEN r.status = 'no_show' THEN 1 ELSE 0 END) AS no_shows,
        SUM(CASE WHEN r.status = 'canceled' THEN 1 ELSE 0 END) AS cancellations,
        SUM(CASE WHEN r.status = 'canceled' AND r.canceled_at IS NOT NULL AND {late}
                 THEN 1 ELSE 0 END) AS late_cancellations,
        SUM(CASE WHEN r.status = 'completed' THEN COALESCE(r.price_estimate_cents, 0) ELSE 0 END)
            AS revenue_estimate_cents,
        SUM(COALESCE(pay.paid, 0)) AS paid_cents,
        SUM(CASE WHEN r.status <> 'canceled' THEN {minutes} ELSE 0 END) AS booked_minutes,
        SUM(CASE WHEN r.status = 'completed' THEN {minutes} ELSE 0 END) AS attended_minutes
    FROM r LEFT JOIN pay ON pay.appointment_id = r.appointment_id
    GROUP BY {key}
    ORDER BY {key}"""


def daily(bind, start, end=None, physio_id=None, as_of=None, by_physio: bool = False) -> pd.DataFrame:
    """Per clinic-local day of the range (every day, zeros where nothing happened):
    bookings, attended, no_shows, cancellations (late / early), revenue_estimate_cents,
    paid_cents, booked_minutes, attended_minutes — the sums the KPIs below are made of.
    With ``by_physio`` one row per (day, physio_id) that has appointments."""
    s = scope(start, end, physio_id, as_of)
    late_secs = int(round(get_settings().late_cancel_hours * 3600))
    with _connect(bind) as conn:
        rows = conn.execute(sa.text(_daily_sql(conn, s, by_physio)), s.params(late_secs=late_secs)).mappings().all()
    frame = pd.DataFrame([dict(r) for r in rows])
    keys = ["local_date", "physio_id"] if by_physio else ["local_date"]
    if frame.empty:
        frame = pd.DataFrame(columns=keys + [c for c in DAILY_COLUMNS if c != "early_cancellations"])
    frame["local_date"] = pd.to_datetime(frame["local_date"].astype(str)).dt.date
    for c in DAILY_COLUMNS:
        if c == "early_cancellations":
            continue
        frame[c] = pd.to_numeric(frame[c]).fillna(0)
        frame[c] = frame[c].round().astype("int64") if not c.endswith("minutes") else frame[c].astype(float)
    frame["early_cancellations"] = frame["cancellations"] - frame["late_cancellations"]
    if by_physio:
        return frame[keys + DAILY_COLUMNS].reset_index(drop=True)
    days = [s.start + dt.timedelta(days=i) for i in range(s.days)]
    out = frame.set_index("local_date")[DAILY_COLUMNS].reindex(days, fill_value=0)
    out.index.name = "local_date"
    return out


def _totals(bind, start, end, physio_id, as_of) -> pd.Series:
    return daily(bind, start, end, physio_id, as_of).sum()


# --- KPIs (each: formula in the docstring) ----------------------------------------------------

def bookings(bind, start, end=None, physio_id=None, as_of=None) -> int:
    """bookings = |R|: appointments scheduled on the days of the range, whatever became of them
    (booked, attended, no-show or canceled). bookings = attended + no-shows + cancellations +
    still booked."""
    return int(_totals(bind, start, end, physio_id, as_of)["bookings"])


def attended(bind, start, end=None, physio_id=None, as_of=None) -> int:
    """attended = |{a in R : status = completed}|."""
    return int(_totals(bind, start, end, physio_id, as_of)["attended"])


def no_shows(bind, start, end=None, physio_id=None, as_of=None) -> int:
    """no-shows = |{a in R : status = no_show}|."""
    return int(_totals(bind, start, end, physio_id, as_of)["no_shows"])


def show_rate(bind, start, end=None, physio_id=None, as_of=None) -> float | None:
    """show rate = attended / (attended + no-shows); None when both are 0. Cancellations are not
    in the denominator: a canceled slot was not expected."""
    t = _totals(bind, start, end, physio_id, as_of)
    return _ratio(t["attended"], t["attended"] + t["no_shows"])


def dna_rate(bind, start, end=None, physio_id=None, as_of=None) -> float | None:
    """DNA (did not attend, no-show) rate = no-shows / (attended + no-shows) = 1 - show rate."""
    t = _totals(bind, start, end, physio_id, as_of)
    return _ratio(t["no_shows"], t["attended"] + t["no_shows"])


def cancellations(bind, start, end=None, physio_id=None, as_of=None) -> dict:
    """cancellations = |{a in R : status = canceled}| = late + early, where
    late  = canceled_at > appt_start - LATE_CANCEL_HOURS (default 24 h, real elapsed time), and
    early = the others (including a cancellation with no recorded canceled_at).
    Returns {"total", "late", "early"}."""
    t = _totals(bind, start, end, physio_id, as_of)
    return {"total": int(t["cancellations"]), "late": int(t["late_cancellations"]),
            "early": int(t["early_cancellations"])}


def revenue(bind, start, end=None, physio_id=None, as_of=None) -> dict:
    """revenue estimate = sum of price_estimate_cents over attended visits of R (no price = 0);
    paid = sum of payments.amount_cents paid by as_of (paid_date <= as_of) against those visits;
    unpaid = estimate - paid. Returns {"estimate_cents", "paid_cents", "unpaid_cents"}."""
    t = _totals(bind, start, end, physio_id, as_of)
    est, paid = int(t["revenue_estimate_cents"]), int(t["paid_cents"])
    return {"estimate_cents": est, "paid_cents": paid, "unpaid_cents": est - paid}


def outstanding(bind, as_of=None, physio_id=None, by_physio: bool = False) -> pd.DataFrame:
    """Accounts receivable as of ``as_of`` (the whole history, not the range): every attended
    visit on or before as_of with due = price_estimate_cents - payments paid by as_of > 0, by
    age = as_of - local_date in days: 0-30, 31-60, 61-90, 90+ (91 days and older).
    Returns one row per bucket (all four, zeros included): bucket, visits, outstanding_cents
    (with ``by_physio``: per physio_id and bucket, only non-empty ones)."""
    s = scope(as_of or today_local(get_settings().clinic_tz), None, physio_id, as_of)
    b30, b60, b90 = ((s.as_of - dt.timedelta(days=n)).isoformat() for n in (30, 60, 90))
    group = "x.physio_id, bucket" if by_physio else "bucket"
    with _connect(bind) as conn:
        # The whole history is read once: on SQLite a plain table scan (NOT INDEXED) beats a walk
        # of ix_appointments_local_date that fetches every row. "Paid by as_of" is written as
        # paid_at < as_of_end (the same instant as paid_date <= as_of) so that payments come
        # from the covering ix_payments_appointment_amount_paid without a table lookup.
        # MATERIALIZED keeps the due amount from being computed twice.
        not_indexed = " NOT INDEXED" if db.is_sqlite(conn) else ""
        sql = f"""
    WITH x AS MATERIALIZED (
        SELECT a.physio_id, a.local_date,
               COALESCE(a.price_estimate_cents, 0) - COALESCE((
                   SELECT SUM(p.amount_cents) FROM payments p
                   WHERE p.appointment_id = a.appointment_id AND p.paid_at < :as_of_end), 0) AS due
        FROM appointments a{not_indexed}
        WHERE a.local_date <= :as_of AND a.status = 'completed'{s.physio_sql('a')}
    )
    SELECT {'x.physio_id, ' if by_physio else ''}
        CASE WHEN x.local_date >= :b30 THEN '0-30' WHEN x.local_date >= :b60 THEN '31-60'
             WHEN x.local_date >= :b90 THEN '61-90' ELSE '90+' END AS bucket,
        COUNT(*) AS visits, SUM(x.due) AS outstanding_cents
    FROM x
    WHERE x.due > 0
    GROUP BY {group}"""
        rows = conn.execute(sa.text(sql), s.params(b30=b30, b60=b60, b90=b90)).mappings().all()
    frame = pd.DataFrame([dict(r) for r in rows],
                         columns=(["physio_id"] if by_physio else []) + ["bucket", "visits", "outstanding_cents"])
    frame["visits"] = frame["visits"].astype("int64")
    frame["outstanding_cents"] = pd.to_numeric(frame["outstanding_cents"]).astype("int64")
    if by_physio:
        return frame
    return (frame.set_index("bucket").reindex(list(OUTSTANDING_BUCKETS), fill_value=0)
            .reset_index())


def roster_minutes(bind, start, end=None, physio_id=None) -> pd.DataFrame:
    """Rostered minutes per physio over the range: for every date d of the range, the sum of
    (end_time - start_time) of that physio's physio_hours blocks for weekday(d) that hold on d
    (valid_from <= d <= valid_to: the roster as it was that day, roster.py), in local wall-clock
    minutes (a DST day counts like any other day). Columns: physio_id, full_name,
    rostered_minutes; only physios rostered on some day of the range (a physio who left before
    it has none)."""
    from clinic_lib.core.roster import read_blocks, rostered_minutes
    s = scope(start, end, physio_id)
    with _connect(bind) as conn:
        blocks = read_blocks(conn, None if s.physio_id is None else [s.physio_id])
        minutes = {p: m for p, m in rostered_minutes(blocks, s.start, s.end).items() if m > 0}
        names = dict(conn.execute(sa.select(db.physios.c.physio_id, db.physios.c.full_name)
                                  .where(db.physios.c.physio_id.in_(list(minutes) or [-1]))).all())
    return pd.DataFrame([(p, names.get(p), float(m)) for p, m in sorted(minutes.items())],
                        columns=["physio_id", "full_name", "rostered_minutes"])


def utilization(bind, start, end=None, physio_id=None, as_of=None) -> pd.DataFrame:
    """Per physio over the range:
    booked utilization   = booked minutes / rostered minutes, booked minutes = sum of
                           (appt_end - appt_start) over R minus cancellations (booked, attended,
                           no-show: the slot was taken);
    attended utilization = attended minutes / rostered minutes (attended visits only);
    rostered minutes as in ``roster_minutes``; None when a physio has no roster in the range.
    Columns: physio_id, full_name, rostered_minutes, booked_minutes, attended_minutes,
    booked_utilization, attended_utilization. The clinic total is sum(booked) / sum(rostered)."""
    s = scope(start, end, physio_id, as_of)
    per = daily(bind, s.start, s.end, s.physio_id, s.as_of, by_physio=True)
    per = per[per["physio_id"].notna()]
    used = (per.groupby(per["physio_id"].astype("int64"))[["booked_minutes", "attended_minutes"]].sum()
            .reset_index())
    roster = roster_minutes(bind, s.start, s.end, s.physio_id)
    out = roster.merge(used, on="physio_id", how="outer")
    if out["full_name"].isna().any():
        with _connect(bind) as conn:
            names = dict(conn.execute(sa.text("SELECT physio_id, full_name FROM physios")).all())
        out["full_name"] = out["full_name"].fillna(out["physio_id"].map(names))
    for c in ("rostered_minutes", "booked_minutes", "attended_minutes"):
        out[c] = out[c].fillna(0.0).astype(float)
    den = out["rostered_minutes"].where(out["rostered_minutes"] > 0)
    out["booked_utilization"] = (out["booked_minutes"] / den).astype(object).where(den.notna(), None)
    out["attended_utilization"] = (out["attended_minutes"] / den).astype(object).where(den.notna(), None)
    return out.sort_values("physio_id").reset_index(drop=True)


def _new_patients_sql(s: Scope, group: bool = False) -> str:
    head = "a.local_date, a.physio_id, " if group else ""
    tail = " GROUP BY a.local_date, a.physio_id" if group else ""
    return f"""
    SELECT {head}COUNT(DISTINCT a.patient_id) AS new_patients FROM appointments a
    WHERE a.local_date >= :start AND a.local_date <= :end AND a.status = 'completed'
      AND a.booked_at < :as_of_end{s.physio_sql('a')}
      AND NOT EXISTS (SELECT 1 FROM appointments b
                      WHERE b.patient_id = a.patient_id AND b.appt_start < a.appt_start
                        AND b.status = 'completed'){tail}"""


def new_patients(bind, start, end=None, physio_id=None, as_of=None) -> int:
    """new patients = distinct patients with an attended visit in R and no attended visit
    before it (their first ever attendance falls in the range; with a physio filter: it was
    with that physio). Computed from the visits, not from the is_first_visit flag."""
    s = scope(start, end, physio_id, as_of)
    with _connect(bind) as conn:
        return int(conn.execute(sa.text(_new_patients_sql(s)), s.params()).scalar() or 0)


def _rebooking_sql(conn, s: Scope, group: bool = False) -> str:
    window = REBOOK_WINDOW_HOURS * 3600
    head = "v.local_date, v.physio_id, " if group else ""
    tail = " GROUP BY v.local_date, v.physio_id" if group else ""
    return f"""
    SELECT {head}COUNT(*) AS visits, COALESCE(SUM(CASE WHEN EXISTS (
            SELECT 1 FROM appointments b
            WHERE b.patient_id = v.patient_id AND b.appt_start > v.appt_start
              AND b.appointment_id <> v.appointment_id AND b.booked_at < :as_of_end
              AND {_secs(conn, 'b.booked_at')} <= {_secs(conn, 'v.appt_end')} + {window}
              AND (b.canceled_at IS NULL
                   OR {_secs(conn, 'b.canceled_at')} > {_secs(conn, 'v.appt_end')} + {window})
        ) THEN 1 ELSE 0 END), 0) AS rebooked
    FROM appointments v
    WHERE v.local_date >= :start AND v.local_date <= :end AND v.status = 'completed'
      AND v.booked_at < :as_of_end{s.physio_sql('v')}{tail}"""


def rebooking(bind, start, end=None, physio_id=None, as_of=None) -> dict:
    """rebooking rate = rebooked visits / attended visits of R, where an attended visit v is
    *rebooked* if the patient left with a later appointment: another appointment b of the same
    patient (any physio) with b.appt_start > v.appt_start, booked no later than 24 h after v
    ended (b.booked_at <= v.appt_end + 24 h, so "booked at checkout or already booked"), not
    canceled within that window (canceled_at null or > v.appt_end + 24 h), and booked by as_of.
    Returns {"visits", "rebooked", "rate"} (rate None when no visits)."""
    s = scope(start, end, physio_id, as_of)
    with _connect(bind) as conn:
        row = conn.execute(sa.text(_rebooking_sql(conn, s)), s.params()).mappings().one()
    visits, rebooked = int(row["visits"] or 0), int(row["rebooked"] or 0)
    return {"visits": visits, "rebooked": rebooked, "rate": _ratio(rebooked, visits)}


def patient_visit_average(bind, start, end=None, physio_id=None, as_of=None) -> float | None:
    """PVA (patient visit average), as the physiotherapy trade defines it: attended visits /
    new patients over the same range (an estimate of visits per course of care); None with no
    new patients. See also ``visits_per_patient``."""
    n_new = new_patients(bind, start, end, physio_id, as_of)
    return _ratio(attended(bind, start, end, physio_id, as_of), n_new)


def visits_per_patient(bind, start, end=None, physio_id=None, as_of=None) -> float | None:
    """visits per patient = attended visits of R / distinct patients with an attended visit in R."""
    s = scope(start, end, physio_id, as_of)
    sql = f"""SELECT COUNT(*), COUNT(DISTINCT a.patient_id) FROM appointments a
              WHERE a.local_date >= :start AND a.local_date <= :end AND a.status = 'completed'
                AND a.booked_at < :as_of_end{s.physio_sql('a')}"""
    with _connect(bind) as conn:
        visits, patients = conn.execute(sa.text(sql), s.params()).one()
    return _ratio(visits, patients)


def risk_buckets(bind, day, physio_id=None) -> pd.DataFrame:
    """Appointments of clinic-local ``day`` that are not canceled, by the risk bucket of their
    latest score in risk_scores (low / medium / high; 'not scored' without one).
    Columns: risk_bucket, appointments (all four rows)."""
    s = scope(day, None, physio_id, day)
    sql = f"""
    SELECT COALESCE(r.risk_bucket, 'not scored') AS risk_bucket, COUNT(*) AS appointments
    FROM appointments a
    LEFT JOIN risk_scores r ON r.appointment_id = a.appointment_id
         AND r.day = (SELECT MAX(r2.day) FROM risk_scores r2 WHERE r2.appointment_id = a.appointment_id)
    WHERE a.local_date = :start AND a.status <> 'canceled'{s.physio_sql('a')}
    GROUP BY COALESCE(r.risk_bucket, 'not scored')"""
    with _connect(bind) as conn:
        rows = dict(conn.execute(sa.text(sql), s.params()).all())
    return pd.DataFrame({"risk_bucket": list(RISK_BUCKETS),
                         "appointments": [int(rows.get(b, 0)) for b in RISK_BUCKETS]})


# --- everything a dashboard card needs, at once -------------------------------------------------

@dataclass
class Summary:
    start: dt.date
    end: dt.date
    physio_id: int | None
    as_of: dt.date
    bookings: int = 0
    attended: int = 0
    no_shows: int = 0
    show_rate: float | None = None
    dna_rate: float | None = None
    cancellations: int = 0
    late_cancellations: int = 0
    early_cancellations: int = 0
    revenue_estimate_cents: int = 0
    paid_cents: int = 0
    booked_utilization: float | None = None
    attended_utilization: float | None = None
    new_patients: int = 0
    rebooking_rate: float | None = None
    patient_visit_average: float | None = None
    outstanding_cents: int = 0
    outstanding_visits: int = 0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def summary(bind, start, end=None, physio_id=None, as_of=None, with_outstanding: bool = True) -> Summary:
    """Every card KPI for one range (the definitions are the functions above), with few queries:
    one daily query, roster, new patients, rebooking and (optionally) outstanding."""
    s = scope(start, end, physio_id, as_of)
    with _connect(bind) as conn:
        t = daily(conn, s.start, s.end, s.physio_id, s.as_of).sum()
        roster = roster_minutes(conn, s.start, s.end, s.physio_id)["rostered_minutes"].sum()
        n_new = new_patients(conn, s.start, s.end, s.physio_id, s.as_of)
        rebook = rebooking(conn, s.start, s.end, s.physio_id, s.as_of)
        out = outstanding(conn, s.as_of, s.physio_id) if with_outstanding else None
    att, ns = int(t["attended"]), int(t["no_shows"])
    result = Summary(
        start=s.start, end=s.end, physio_id=s.physio_id, as_of=s.as_of,
        bookings=int(t["bookings"]), attended=att, no_shows=ns,
        show_rate=_ratio(att, att + ns), dna_rate=_ratio(ns, att + ns),
        cancellations=int(t["cancellations"]), late_cancellations=int(t["late_cancellations"]),
        early_cancellations=int(t["early_cancellations"]),
        revenue_estimate_cents=int(t["revenue_estimate_cents"]), paid_cents=int(t["paid_cents"]),
        booked_utilization=_ratio(float(t["booked_minutes"]), float(roster)),
        attended_utilization=_ratio(float(t["attended_minutes"]), float(roster)),
        new_patients=n_new, rebooking_rate=rebook["rate"],
        patient_visit_average=_ratio(att, n_new))
    if out is not None:
        result.outstanding_cents = int(out["outstanding_cents"].sum())
        result.outstanding_visits = int(out["visits"].sum())
    return result
