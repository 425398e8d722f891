"""The model in practice: how the risk model did on the days it scored, once their outcomes are known.

**Outcome rows.** The model's own target (``features.label``): an appointment scored for day D
*failed* when it ended as a no-show or a cancellation less than LATE_CANCEL_HOURS before its start,
and *attended* when it was completed. Early cancellations, appointments still ``booked`` (the
day's drop has not come yet) and appointments moved to another day since they were scored are not
outcome rows: they are counted as scored, not judged.

**One row per scored day** in ``model_monitoring`` (``update_monitoring``): appointments scored,
with an outcome, failed; mean predicted risk and observed failure rate of the outcome rows; ROC AUC
when both outcomes occur; precision@k of that day's call list: the share of failures among the
list's top k ranks (k = CALL_CAPACITY) that have an outcome, held-out rows included. A day whose
list was never built has ``list_built`` 0 and no precision (NULL): there was no list to judge. The
model version(s) that scored the day are listed.

**When rows are (re)computed.** ``update_monitoring(D)`` runs after the refresh of day D. It looks
at the scored days from D - LOOKBACK_DAYS to D and recomputes each whose inputs changed since its
row was written: no row yet (the day's outcomes just arrived), other scores (another model, a
rescoring: count or latest ``scored_at`` differ), another list (latest ``built_at`` of its top k
differs), another k. It also recomputes every scored day whose appointments the drop D wrote (rows
with ``source_day`` = D: a late or corrected drop), and deletes the rows of days whose scores are
gone. Days after the latest drop applied (max ``source_day``) wait for theirs. A day's row is replaced, never added twice; recomputing gives the same row. All of it is
one transaction. ``recompute_monitoring(start, end)`` redoes a range (after changing
LATE_CANCEL_HOURS, say).

**Rolling figures** (``rolling_figures``): the last ROLLING_DAYS (28) days *pooled* (every outcome
row of the window counts once, whatever its day), beside the holdout estimate of ``metrics.json``
(``holdout_estimate``). Calibration drift: the outcome rows in the risk bands of
RISK_BUCKET_THRESHOLDS (low / medium / high), observed failure rate vs mean predicted risk per band,
and ``calibration_gap`` = sum over bands of n_band * |observed_band - predicted_band| / n (the
rows' average distance from calibration, in failure-rate points).

**Retraining on evidence**: ``retraining.py`` reads these figures.
"""
from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from clinic_lib.core import db
from clinic_lib.core.config import Settings, get_settings
from clinic_lib.core.migrate import ensure_schema
from clinic_lib.core.timeutil import parse_day, utc_now_text
from clinic_lib.modeling import features as F

ROLLING_DAYS = 28  # "the last 4 weeks"
LOOKBACK_DAYS = 35  # scored days checked for changes after each refresh: the rolling window and a week
BANDS = ("low", "medium", "high")
# Where metrics.json keeps the estimate on held-out days, newest layout first; the first path that
# leads to a dict with a roc_auc wins. The chain scores appointments booked before the evening, so the
# estimate to compare with is that population's (train.py writes it under holdout.booked_before_evening);
# "validation" is the layout of models saved by older code.
HOLDOUT_KEYS = ("holdout.booked_before_evening", "validation")

MONITORING_COLUMNS = [c.name for c in db.model_monitoring.columns]


# --- reading scored appointments with their outcomes ---------------------------------------------

def _instants(values: pd.Series) -> pd.Series:
    if len(values) and values.notna().any() and not isinstance(values.dropna().iloc[0], str):
        return pd.to_datetime(values, utc=True)
    try:  # the stored form 'YYYY-MM-DDTHH:MM:SS+00:00'
        return pd.to_datetime(values, utc=True, format="%Y-%m-%dT%H:%M:%S%z")
    except (ValueError, TypeError):
        return pd.to_datetime(values, utc=True, format="ISO8601")


def judge(rows: pd.DataFrame, late_cancel_hours: float) -> pd.DataFrame:
    """Add ``has_outcome`` and ``failed`` to rows holding day, status, appt_start, canceled_at and
    local_date (the model's target; an appointment moved off the scored day has no outcome)."""
    frame = pd.DataFrame({"status": rows["status"], "appt_start": _instants(rows["appt_start"]),
                          "canceled_at": _instants(rows["canceled_at"])}, index=rows.index)
    target, eligible = F.label(frame, late_cancel_hours)
    same_day = (rows["local_date"].astype(str).to_numpy() == rows["day"].astype(str).to_numpy())
    out = rows.copy()
    out["has_outcome"] = eligible.to_numpy() & same_day
    out["failed"] = target.to_numpy().astype(bool) & out["has_outcome"].to_numpy()
    return out


SCORED_COLUMNS = ["day", "appointment_id", "risk", "model_version", "scored_at", "status", "appt_start",
                  "canceled_at", "local_date"]
LIST_COLUMNS = ["day", "appointment_id", "rank", "holdout", "risk_score", "built_at", "status", "appt_start",
                "canceled_at", "local_date"]


def _days_condition(column, start, end, days):
    if days is not None:
        return column.in_([_day_text(d) for d in days])
    return sa.and_(column >= _day_text(start), column <= _day_text(end))


def scored_query(start=None, end=None, days=None, model_version: str | None = None) -> sa.Select:
    """The scores of the days in [start, end] (or of ``days``) joined to their appointments: the
    range of risk_scores' primary key (day, appointment_id), then each appointment by its own."""
    r, a = db.risk_scores, db.appointments
    query = (sa.select(*(r.c[c] if c in r.c else a.c[c] for c in SCORED_COLUMNS))
             .select_from(r.join(a, a.c.appointment_id == r.c.appointment_id))
             .where(_days_condition(r.c.day, start, end, days)))
    if model_version is not None:
        query = query.where(r.c.model_version == model_version)
    return query


def list_query(start=None, end=None, days=None, k: int = 10) -> sa.Select:
    """The top ``k`` ranks of the call lists of the days in [start, end] (or of ``days``) joined to
    their appointments: the index priorities(day, rank), then each appointment by its primary key."""
    p, a = db.priorities, db.appointments
    return (sa.select(*(p.c[c] if c in p.c else a.c[c] for c in LIST_COLUMNS))
            .select_from(p.join(a, a.c.appointment_id == p.c.appointment_id))
            .where(_days_condition(p.c.day, start, end, days), p.c.rank <= int(k)))


def _frame(rows, columns) -> pd.DataFrame:
    """Result rows as a frame, column by column (pandas would inspect each row object in turn)."""
    data = list(zip(*rows)) if rows else [[] for _ in columns]
    return pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in zip(columns, data)})


def scored_outcomes(conn, start=None, end=None, days=None, model_version: str | None = None,
                    late_cancel_hours: float = 24.0) -> pd.DataFrame:
    """Every score of the days in [start, end] (or of ``days``) with its appointment's outcome:
    ``SCORED_COLUMNS`` plus has_outcome and failed (see ``judge``)."""
    rows = _frame(conn.execute(scored_query(start, end, days, model_version)).all(), SCORED_COLUMNS)
    if rows.empty:
        return rows.assign(has_outcome=pd.Series(dtype=bool), failed=pd.Series(dtype=bool))
    rows["risk"] = rows["risk"].astype(float)
    return judge(rows, late_cancel_hours)


def list_outcomes(conn, start=None, end=None, days=None, k: int = 10,
                  late_cancel_hours: float = 24.0) -> pd.DataFrame:
    """The call lists' top ``k`` ranks of the days in [start, end] (or of ``days``) with their
    appointments' outcomes: ``LIST_COLUMNS`` plus has_outcome and failed."""
    rows = _frame(conn.execute(list_query(start, end, days, k)).all(), LIST_COLUMNS)
    if rows.empty:
        return rows.assign(has_outcome=pd.Series(dtype=bool), failed=pd.Series(dtype=bool))
    return judge(rows, late_cancel_hours)


def _day_text(value) -> str:
    return parse_day(value).isoformat()


# --- figures --------------------------------------------------------------------------------------

def roc_auc(failed, risk) -> float | None:
    """ROC AUC as the Mann-Whitney statistic: the probability that a failed appointment got a higher
    risk than an attended one (ties count half); None unless both outcomes occur."""
    y = np.asarray(failed, dtype=bool)
    p = np.asarray(risk, dtype=float)
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return None
    ranks = pd.Series(p).rank(method="average").to_numpy()
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def band_of(risk, thresholds) -> np.ndarray:
    low, high = thresholds
    risk = np.asarray(risk, dtype=float)
    return np.where(risk < low, "low", np.where(risk < high, "medium", "high")).astype(object)


def calibration_by_band(failed, risk, thresholds) -> pd.DataFrame:
    """Outcome rows per risk band: n, failures, mean predicted risk, observed rate, their gap."""
    frame = pd.DataFrame({"band": band_of(risk, thresholds), "failed": np.asarray(failed, dtype=float),
                          "risk": np.asarray(risk, dtype=float)})
    g = frame.groupby("band")
    out = pd.DataFrame({"n": g.size(), "failures": g["failed"].sum().astype(int),
                        "mean_predicted": g["risk"].mean(), "observed_rate": g["failed"].mean()})
    out = out.reindex(list(BANDS)).dropna(subset=["n"])
    out["n"] = out["n"].astype(int)
    out["gap"] = out["observed_rate"] - out["mean_predicted"]
    return out.rename_axis("band").reset_index()


def calibration_gap(by_band: pd.DataFrame) -> float | None:
    """sum n_band * |observed_band - predicted_band| / n over the bands."""
    n = by_band["n"].sum() if len(by_band) else 0
    if not n:
        return None
    return float((by_band["n"] * by_band["gap"].abs()).sum() / n)


def day_rows(scored: pd.DataFrame, listed: pd.DataFrame, days, k: int, computed_at: str) -> list[dict]:
    """The ``model_monitoring`` rows of ``days`` from their scores and lists (see the module doc);
    a day without scores gets no row."""
    out = []
    by_day = dict(tuple(scored.groupby("day"))) if len(scored) else {}
    lists = dict(tuple(listed.groupby("day"))) if len(listed) else {}
    for day in sorted({_day_text(d) for d in days}):
        s = by_day.get(day)
        if s is None or s.empty:
            continue
        judged = s[s["has_outcome"]]
        n_outcome, n_failed = int(len(judged)), int(judged["failed"].sum())
        top = lists.get(day)
        list_judged = top[top["has_outcome"]] if top is not None else None
        list_n_outcome = int(len(list_judged)) if top is not None else 0
        list_n_failed = int(list_judged["failed"].sum()) if top is not None else 0
        out.append({
            "day": day, "n_scored": int(len(s)), "n_outcome": n_outcome, "n_failed": n_failed,
            "mean_risk": float(judged["risk"].mean()) if n_outcome else None,
            "observed_rate": n_failed / n_outcome if n_outcome else None,
            "roc_auc": roc_auc(judged["failed"], judged["risk"]),
            "k": int(k), "list_built": int(top is not None), "list_n": int(len(top)) if top is not None else 0,
            "list_n_outcome": list_n_outcome, "list_n_failed": list_n_failed,
            "precision_at_k": list_n_failed / list_n_outcome if list_n_outcome else None,
            "model_versions": ",".join(sorted(set(s["model_version"]))),
            "scored_at": max(s["scored_at"]), "built_at": max(top["built_at"]) if top is not None else None,
            "computed_at": computed_at})
    return out


# --- keeping the table up to date ---------------------------------------------------------------

@dataclass
class MonitoringUpdate:
    day: dt.date
    recomputed: list[str]  # the days whose row was (re)written, 'YYYY-MM-DD'
    deleted: list[str]  # the days whose row went (their scores are gone)
    seconds: float

    def summary(self) -> str:
        parts = [f"model monitoring after {self.day}: {len(self.recomputed)} day(s) recomputed"]
        if self.recomputed:
            parts.append(f"({', '.join(self.recomputed[:5])}{', ...' if len(self.recomputed) > 5 else ''})")
        if self.deleted:
            parts.append(f"; {len(self.deleted)} row(s) of days without scores removed")
        return " ".join(parts)


def latest_drop_day(conn) -> str | None:
    """The latest day whose drop has been applied (max source_day: one probe of its partial index)."""
    latest = conn.execute(sa.select(sa.func.max(db.appointments.c.source_day))
                          .where(db.appointments.c.source_day.is_not(None))).scalar()
    return str(latest) if latest is not None else None


def _signature_queries(lo: str, hi: str, k: int, drop_days, known: str | None = None):
    """What tells whether a day's row is current, for the days in [lo, hi]: per day its scores'
    count and latest scored_at, its list's latest built_at, the stored row's record of both; and the
    days (up to ``known``) of the appointments the drops of ``drop_days`` wrote last."""
    r, p, m, a = db.risk_scores, db.priorities, db.model_monitoring, db.appointments
    scored = (sa.select(r.c.day, sa.func.count(), sa.func.max(r.c.scored_at))
              .where(r.c.day >= lo, r.c.day <= hi).group_by(r.c.day))
    listed = (sa.select(p.c.day, sa.func.max(p.c.built_at))
              .where(p.c.day >= lo, p.c.day <= hi, p.c.rank <= int(k)).group_by(p.c.day))
    stored = (sa.select(m.c.day, m.c.n_scored, m.c.scored_at, m.c.built_at, m.c.k)
              .where(m.c.day >= lo, m.c.day <= hi))
    written = sa.select(a.c.local_date).distinct().where(a.c.source_day.in_([_day_text(d) for d in drop_days]))
    if known is not None:
        written = written.where(a.c.local_date <= known)
    return scored, listed, stored, written


def _signatures(conn, lo: str, hi: str, k: int):
    q_scored, q_listed, q_stored, _ = _signature_queries(lo, hi, k, [])
    scored = {str(d): (int(n), s) for d, n, s in conn.execute(q_scored)}
    built = {str(d): b for d, b in conn.execute(q_listed)}
    stored = {str(row.day): (row.n_scored, row.scored_at, row.built_at, row.k) for row in conn.execute(q_stored)}
    return scored, built, stored


def _days_written_by(conn, drop_days, known: str) -> set[str]:
    """Local dates (up to ``known``) of the appointments the given drops wrote last."""
    if not drop_days:
        return set()
    written = _signature_queries("", "", 0, drop_days, known)[3]
    return {str(d) for d in conn.execute(written).scalars()}


def _scored_days(conn, days) -> set[str]:
    if not days:
        return set()
    r = db.risk_scores
    found = set()
    for day in sorted(days):  # one probe of the primary key each
        if conn.execute(sa.select(r.c.day).where(r.c.day == day).limit(1)).first():
            found.add(day)
    return found


def _write(engine, settings: Settings, recompute: set[str], delete: set[str]) -> None:
    k = settings.call_capacity
    m = db.model_monitoring
    with db.begin_write(engine) as conn:  # read and write in one transaction: one consistent state
        days = sorted(recompute)
        scored = scored_outcomes(conn, days=days, late_cancel_hours=settings.late_cancel_hours) if days else None
        listed = list_outcomes(conn, days=days, k=k, late_cancel_hours=settings.late_cancel_hours) if days else None
        rows = day_rows(scored, listed, days, k, utc_now_text()) if days else []
        gone = sorted((recompute | delete))
        for i in range(0, len(gone), 500):
            conn.execute(m.delete().where(m.c.day.in_(gone[i:i + 500])))
        if rows:
            conn.execute(m.insert(), rows)


def update_monitoring(day, engine: sa.Engine | None = None, settings: Settings | None = None,
                      drop_days=None) -> MonitoringUpdate:
    """After the refresh of ``day``: recompute the monitoring rows of the affected scored days (see
    the module doc). ``drop_days``: the drops applied since the last update (default: ``day``)."""
    t0 = time.perf_counter()
    settings = settings or get_settings()
    day = parse_day(day)
    engine = engine or db.make_engine(settings.database_url)
    ensure_schema(engine)
    k = settings.call_capacity
    with engine.connect() as conn:
        latest = latest_drop_day(conn)
        known = max(day.isoformat(), latest) if latest else day.isoformat()
        # a day after the latest drop has no outcomes yet: not judged before its drop comes
        hi = min(day.isoformat(), latest) if latest else day.isoformat()
        lo = (day - dt.timedelta(days=LOOKBACK_DAYS)).isoformat()
        scored, built, stored = _signatures(conn, lo, hi, k)
        recompute = {d for d, (n, s) in scored.items()
                     if stored.get(d) != (n, s, built.get(d), k)}
        delete = {d for d in stored if d not in scored}
        written = _days_written_by(conn, drop_days if drop_days is not None else [day], known)
        recompute |= {d for d in written if d in scored} | _scored_days(conn, {d for d in written
                                                                               if d < lo or d > hi})
    if recompute or delete:
        _write(engine, settings, recompute, delete)
    return MonitoringUpdate(day, sorted(recompute), sorted(delete), time.perf_counter() - t0)


def recompute_monitoring(start, end, engine: sa.Engine | None = None,
                         settings: Settings | None = None) -> MonitoringUpdate:
    """Recompute the rows of every scored day in [start, end] up to the latest drop (and drop the
    rows of days without scores)."""
    t0 = time.perf_counter()
    settings = settings or get_settings()
    start, end = parse_day(start), parse_day(end)
    engine = engine or db.make_engine(settings.database_url)
    ensure_schema(engine)
    with engine.connect() as conn:
        latest = latest_drop_day(conn)
        hi = min(end.isoformat(), latest) if latest else end.isoformat()
        scored, _, stored = _signatures(conn, start.isoformat(), hi, settings.call_capacity)
    recompute, delete = set(scored), set(stored) - set(scored)
    if recompute or delete:
        _write(engine, settings, recompute, delete)
    return MonitoringUpdate(end, sorted(recompute), sorted(delete), time.perf_counter() - t0)


def monitoring_table(start, end, engine: sa.Engine | None = None) -> pd.DataFrame:
    """The ``model_monitoring`` rows of [start, end], by day."""
    engine = engine or db.make_engine()
    m = db.model_monitoring
    with engine.connect() as conn:
        rows = conn.execute(sa.select(m).where(m.c.day >= _day_text(start), m.c.day <= _day_text(end))
                            .order_by(m.c.day)).mappings().all()
    return pd.DataFrame([dict(r) for r in rows], columns=MONITORING_COLUMNS)


# --- the holdout estimate -------------------------------------------------------------------------

def holdout_estimate(settings: Settings | None = None, path: Path | None = None) -> dict | None:
    """The model's figures on its held-out days, from ``metrics.json`` (None without one).

    Returns roc_auc, base_rate, mean_risk, precision_at_k, calibration_error, n (None where the
    file has no value), the model_version and the key they were read from."""
    settings = settings or get_settings()
    path = Path(path) if path else settings.model_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict):
        return None
    for key in HOLDOUT_KEYS:
        block = metrics
        for part in key.split("."):
            block = block.get(part) if isinstance(block, dict) else None
        if isinstance(block, dict) and isinstance(block.get("roc_auc"), (int, float)):
            out = {name: block.get(name) for name in ("roc_auc", "base_rate", "mean_risk", "precision_at_k",
                                                      "calibration_error", "n")}
            out["model_version"] = metrics.get("model_version")
            out["key"] = key
            return out
    return None


# --- rolling figures --------------------------------------------------------------------------------

@dataclass
class RollingFigures:
    """The last ``days`` days up to ``end`` pooled (see the module doc)."""
    start: dt.date
    end: dt.date
    model_version: str | None  # only this model's scores, or None: every model's
    days_scored: int
    n_scored: int
    n_outcome: int
    n_failed: int
    mean_risk: float | None
    observed_rate: float | None
    roc_auc: float | None
    by_band: pd.DataFrame  # band, n, failures, mean_predicted, observed_rate, gap
    calibration_gap: float | None
    list_n_outcome: int  # the call lists' top-k rows with an outcome (every model)
    precision_at_k: float | None
    holdout: dict | None = None
    extra: dict = field(default_factory=dict)

    @property
    def auc_drop(self) -> float | None:
        """How far the realised ROC AUC is below the holdout estimate (negative: above it)."""
        if self.roc_auc is None or not self.holdout or self.holdout.get("roc_auc") is None:
            return None
        return float(self.holdout["roc_auc"]) - self.roc_auc

    def table(self) -> pd.DataFrame:
        """The headline figures beside the holdout estimate, for a notebook or the dashboard."""
        h = self.holdout or {}
        rows = [("appointments with an outcome", self.n_outcome, h.get("n")),
                ("observed failure rate", self.observed_rate, h.get("base_rate")),
                ("mean predicted risk", self.mean_risk, h.get("mean_risk")),
                ("ROC AUC", self.roc_auc, h.get("roc_auc")),
                ("precision@k of the call list", self.precision_at_k, h.get("precision_at_k")),
                ("calibration gap (risk bands)", self.calibration_gap, None)]
        return pd.DataFrame(rows, columns=["figure", f"in practice {self.start} .. {self.end}",
                                           "holdout estimate"]).set_index("figure")


def rolling_figures(end_day, engine: sa.Engine | None = None, settings: Settings | None = None,
                    days: int = ROLLING_DAYS, model_version: str | None = None,
                    holdout: dict | None = None) -> RollingFigures:
    """Pool the scored days in [end_day - days + 1, end_day]; reads only those days' rows through
    the primary keys of risk_scores and appointments and the index priorities(day, rank).

    ``model_version``: only that model's scores (the call lists count whatever scored them).
    ``holdout``: the estimate to compare with (default: ``holdout_estimate()``)."""
    settings = settings or get_settings()
    end = parse_day(end_day)
    start = end - dt.timedelta(days=int(days) - 1)
    engine = engine or db.make_engine(settings.database_url)
    with engine.connect() as conn:
        scored = scored_outcomes(conn, start, end, model_version=model_version,
                                 late_cancel_hours=settings.late_cancel_hours)
        listed = list_outcomes(conn, start, end, k=settings.call_capacity,
                               late_cancel_hours=settings.late_cancel_hours)
    judged = scored[scored["has_outcome"]]
    n_outcome, n_failed = int(len(judged)), int(judged["failed"].sum())
    by_band = calibration_by_band(judged["failed"], judged["risk"], settings.risk_thresholds)
    list_judged = listed[listed["has_outcome"]]
    return RollingFigures(
        start=start, end=end, model_version=model_version,
        days_scored=int(scored["day"].nunique()), n_scored=int(len(scored)),
        n_outcome=n_outcome, n_failed=n_failed,
        mean_risk=float(judged["risk"].mean()) if n_outcome else None,
        observed_rate=n_failed / n_outcome if n_outcome else None,
        roc_auc=roc_auc(judged["failed"], judged["risk"]),
        by_band=by_band, calibration_gap=calibration_gap(by_band),
        list_n_outcome=int(len(list_judged)),
        precision_at_k=float(list_judged["failed"].mean()) if len(list_judged) else None,
        holdout=holdout if holdout is not None else holdout_estimate(settings))


def weekly_figures(start, end, engine: sa.Engine | None = None, settings: Settings | None = None) -> pd.DataFrame:
    """Per week (Monday to Sunday) of [start, end], pooled: outcome rows, failures, mean predicted
    risk, observed failure rate, ROC AUC, and the model versions that scored the week."""
    settings = settings or get_settings()
    engine = engine or db.make_engine(settings.database_url)
    with engine.connect() as conn:
        scored = scored_outcomes(conn, parse_day(start), parse_day(end), late_cancel_hours=settings.late_cancel_hours)
    columns = ["week", "n_outcome", "n_failed", "mean_risk", "observed_rate", "roc_auc", "model_versions"]
    judged = scored[scored["has_outcome"]].copy()
    if judged.empty:
        return pd.DataFrame(columns=columns)
    days = pd.to_datetime(judged["day"].astype(str))
    judged["week"] = (days - pd.to_timedelta(days.dt.day_of_week, unit="D")).dt.date
    out = []
    for week, part in judged.groupby("week", sort=True):
        out.append({"week": week, "n_outcome": int(len(part)), "n_failed": int(part["failed"].sum()),
                    "mean_risk": float(part["risk"].mean()), "observed_rate": float(part["failed"].mean()),
                    "roc_auc": roc_auc(part["failed"], part["risk"]),
                    "model_versions": ",".join(sorted(set(part["model_version"])))})
    return pd.DataFrame(out, columns=columns)
