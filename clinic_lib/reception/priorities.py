"""The evening callback list: whom reception phones before clinic day D, in what order, and why.

For every appointment of clinic-local day D that is still ``booked``:

- ``is_new_patient``: the appointment is marked as a first visit, or the patient has no completed
  appointment before D;
- ``missing_phone``: no phone number reception can dial (``phones.dialable``, the rule validation
  uses: empty, in scientific notation, or not a possible number in PHONE_REGION);
- ``missing_consent``: the patient's consent form has not been received;
- ``risk_score`` / ``risk_bucket``: the model's calibrated risk for D from ``risk_scores``
  (``risk_source = 'model'``). An appointment without a model score (no scoring run for D, or
  booked after it) gets the *heuristic* risk (``risk_source = 'heuristic'``)::

      risk = clip(0.05 + 0.10 * is_new_patient + 0.10 * min(lead_days, 30) / 30
                  + 0.60 * past_no_show_rate, 0, 1)

  where ``lead_days`` is the days from booking to the appointment and ``past_no_show_rate`` is
  no-shows / (completed + no-shows) of the patient before D (0 without history). Its bucket uses
  the configured thresholds (RISK_BUCKET_THRESHOLDS: low < t0 <= medium < t1 <= high).
- ``priority_score`` = w_risk * risk + w_new_patient * is_new_patient + w_missing_phone *
  missing_phone + w_missing_consent * missing_consent + w_early_slot * (local start before 10:00),
  with the weights of ``config.DEFAULT_PRIORITY_WEIGHTS`` (env PRIORITY_WEIGHT_<NAME>).
- ``priority_reason``: the same facts in words, e.g. ``first visit, high risk 0.41, no phone``.
- ``holdout``: 1 when the randomised call holdout (``CALL_HOLDOUT_SHARE`` > 0, ``holdout.py``) keeps
  the appointment out of the calls; its reason then starts with ``hold out: do not call``. A held-out
  row keeps its place and rank: reception sees it and skips it, and the call-effect analysis compares
  the held-out rows of the top ``CALL_CAPACITY`` ranks with the others (``call_effect.py``). Reminder
  emails do not look at it.

The list is sorted by priority_score (highest first), then start time, then appointment id, and
written to ``outputs/priorities/priorities_D.csv`` and to the ``priorities`` table, replacing D's
rows in one transaction.
"""
from __future__ import annotations

import datetime as dt
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from clinic_lib.core import db
from clinic_lib.core.config import Settings, get_settings
from clinic_lib.core.migrate import ensure_schema
from clinic_lib.core.phones import dialable
from clinic_lib.core.timeutil import parse_day, read_instants, utc_now_text
from clinic_lib.reception.holdout import clinic_secret, held_out

HEURISTIC = {"base": 0.05, "new_patient": 0.10, "lead": 0.10, "lead_cap_days": 30, "no_show_rate": 0.60}
EARLY_SLOT_BEFORE = dt.time(10, 0)
HOLDOUT_REASON = "hold out: do not call; "

CSV_COLUMNS = ["rank", "day", "appointment_id", "appt_start", "physio_name", "patient_id", "patient_name",
               "phone", "is_new_patient", "missing_phone", "missing_consent", "risk_score", "risk_bucket",
               "risk_source", "priority_score", "priority_reason", "holdout"]
TABLE_COLUMNS = [c.name for c in db.priorities.columns]


@dataclass
class PrioritiesResult:
    day: dt.date
    frame: pd.DataFrame  # the list, in rank order (CSV_COLUMNS)
    csv_path: Path
    risk_sources: dict  # {'model': n, 'heuristic': n}

    def __len__(self) -> int:
        return len(self.frame)


def day_param(conn_or_engine, day: dt.date):
    """A day as the database binds it: text on SQLite, a date on Postgres."""
    return day.isoformat() if db.is_sqlite(conn_or_engine) else day


def bucket_of(risk: float, thresholds: tuple[float, float]) -> str:
    low, high = thresholds
    return "low" if risk < low else ("medium" if risk < high else "high")


def heuristic_risk(is_new: pd.Series, lead_days: pd.Series, no_show_rate: pd.Series) -> pd.Series:
    h = HEURISTIC
    lead = lead_days.clip(lower=0, upper=h["lead_cap_days"]) / h["lead_cap_days"]
    risk = h["base"] + h["new_patient"] * is_new + h["lead"] * lead + h["no_show_rate"] * no_show_rate
    return risk.clip(0.0, 1.0)


def _phone_missing(phone: pd.Series, region: str | None = None) -> pd.Series:
    """1 where reception cannot dial the number (validation's rule: ``phones.dialable``)."""
    return (~dialable(phone, region)).astype(int)


def _reason(row) -> str:
    parts = []
    if row.is_new_patient:
        parts.append("first visit")
    risk = f"{row.risk_bucket} risk {row.risk_score:.2f}"
    if row.risk_source == "heuristic":
        risk += " (estimated, no model score)"
    parts.append(risk)
    if row.missing_phone:
        parts.append("no phone")
    if row.missing_consent:
        parts.append("no consent form")
    if row.early_slot:
        parts.append(f"early slot {row.local_time}")
    return ", ".join(parts)


def _chunks(values, n=900):
    values = list(values)
    for i in range(0, len(values), n):
        yield values[i:i + n]


def compute_priorities(conn: sa.Connection, day: dt.date, settings: Settings) -> pd.DataFrame:
    """The ranked list for ``day`` (read-only)."""
    a, p, ph = db.appointments, db.patients, db.physios
    query = (sa.select(a.c.appointment_id, a.c.patient_id, a.c.appt_start, a.c.booked_at, a.c.is_first_visit,
                       p.c.first_name, p.c.last_name, p.c.phone, p.c.consent_form_received,
                       ph.c.full_name.label("physio_name"))
             .select_from(a.join(p, p.c.patient_id == a.c.patient_id)
                          .outerjoin(ph, ph.c.physio_id == a.c.physio_id))
             .where(a.c.local_date == day_param(conn, day), a.c.status == "booked")
             .order_by(a.c.appt_start, a.c.appointment_id))
    frame = pd.DataFrame(conn.execute(query).mappings().all(),
                         columns=["appointment_id", "patient_id", "appt_start", "booked_at", "is_first_visit",
                                  "first_name", "last_name", "phone", "consent_form_received", "physio_name"])
    if frame.empty:
        return pd.DataFrame(columns=CSV_COLUMNS + ["built_at"])

    # The patients' history before D: completed and no-show appointments.
    history = []
    for ids in _chunks(sorted({int(i) for i in frame["patient_id"]})):
        history += conn.execute(
            sa.select(a.c.patient_id,
                      sa.func.sum(sa.case((a.c.status == "completed", 1), else_=0)).label("completed"),
                      sa.func.sum(sa.case((a.c.status == "no_show", 1), else_=0)).label("no_shows"))
            .where(a.c.patient_id.in_(ids), a.c.status.in_(("completed", "no_show")),
                   a.c.local_date < day_param(conn, day))
            .group_by(a.c.patient_id)).mappings().all()
    hist = pd.DataFrame(history, columns=["patient_id", "completed", "no_shows"])
    frame = frame.merge(hist, on="patient_id", how="left")
    frame[["completed", "no_shows"]] = frame[["completed", "no_shows"]].fillna(0).astype(int)

    rs = db.risk_scores
    scores = pd.DataFrame(conn.execute(
        sa.select(rs.c.appointment_id, rs.c.risk, rs.c.risk_bucket.label("risk_bucket_model")).where(rs.c.day == day_param(conn, day))
    ).mappings().all(), columns=["appointment_id", "risk", "risk_bucket_model"])
    frame = frame.merge(scores, on="appointment_id", how="left")

    tz = settings.clinic_tz
    start = read_instants(frame["appt_start"])
    booked = read_instants(frame["booked_at"])
    local = start.dt.tz_convert(tz)
    frame["appt_start_local"] = local
    frame["local_time"] = local.dt.strftime("%H:%M")
    frame["early_slot"] = (local.dt.hour * 60 + local.dt.minute
                           < EARLY_SLOT_BEFORE.hour * 60 + EARLY_SLOT_BEFORE.minute).astype(int)
    frame["is_new_patient"] = ((frame["is_first_visit"].astype(int) == 1) | (frame["completed"] == 0)).astype(int)
    frame["missing_phone"] = _phone_missing(frame["phone"], settings.phone_region)
    frame["missing_consent"] = (frame["consent_form_received"].astype(int) == 0).astype(int)

    attended = frame["completed"] + frame["no_shows"]
    no_show_rate = (frame["no_shows"] / attended.where(attended > 0)).fillna(0.0)
    lead_days = (start - booked).dt.total_seconds() / 86400.0
    heur = heuristic_risk(frame["is_new_patient"], lead_days, no_show_rate)
    has_model = frame["risk"].notna()
    frame["risk_source"] = np.where(has_model, "model", "heuristic")
    frame["risk_score"] = frame["risk"].where(has_model, heur).astype(float).round(4)
    frame["risk_bucket"] = [m if src == "model" else bucket_of(r, settings.risk_thresholds)
                            for m, src, r in zip(frame["risk_bucket_model"], frame["risk_source"],
                                                 frame["risk_score"])]

    w = settings.priority_weights
    frame["priority_score"] = (w["risk"] * frame["risk_score"] + w["new_patient"] * frame["is_new_patient"]
                               + w["missing_phone"] * frame["missing_phone"]
                               + w["missing_consent"] * frame["missing_consent"]
                               + w["early_slot"] * frame["early_slot"]).round(4)
    frame["priority_reason"] = [_reason(r) for r in frame.itertuples(index=False)]
    share = settings.call_holdout_share
    frame["holdout"] = held_out(frame["appointment_id"], share, clinic_secret(settings) if share > 0 else b"")
    frame.loc[frame["holdout"] == 1, "priority_reason"] = HOLDOUT_REASON + frame["priority_reason"]
    frame["patient_name"] = (frame["first_name"].fillna("") + " " + frame["last_name"].fillna("")).str.strip()
    frame = frame.sort_values(["priority_score", "appt_start_local", "appointment_id"],
                              ascending=[False, True, True], kind="mergesort").reset_index(drop=True)
    frame["rank"] = np.arange(1, len(frame) + 1)
    frame["day"] = day.isoformat()
    frame["appt_start"] = [t.isoformat() for t in frame["appt_start_local"]]
    return frame[CSV_COLUMNS]


def _write_csv_atomic(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            frame.to_csv(fh, index=False, lineterminator="\n")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_priorities(day, engine: sa.Engine | None = None, settings: Settings | None = None,
                     write_csv: bool = True) -> PrioritiesResult:
    """Build D's list; replace D's rows of ``priorities`` (one transaction) and write the CSV."""
    from clinic_lib.ingest.refresh import log_etl_run
    settings = settings or get_settings()
    day = parse_day(day)
    engine = engine or db.make_engine(settings.database_url)
    ensure_schema(engine)
    started = utc_now_text()
    csv_path = settings.priorities_dir / f"priorities_{day.isoformat()}.csv"
    try:
        with db.begin_write(engine) as conn:
            frame = compute_priorities(conn, day, settings)
            built_at = utc_now_text()
            conn.execute(db.priorities.delete().where(db.priorities.c.day == day_param(conn, day)))
            if len(frame):
                rows = [{"day": day_param(conn, day), "appointment_id": int(r.appointment_id), "rank": int(r.rank),
                         "patient_id": int(r.patient_id), "is_new_patient": int(r.is_new_patient),
                         "missing_phone": int(r.missing_phone), "missing_consent": int(r.missing_consent),
                         "risk_score": float(r.risk_score), "risk_bucket": r.risk_bucket,
                         "risk_source": r.risk_source, "priority_score": float(r.priority_score),
                         "priority_reason": r.priority_reason, "holdout": int(r.holdout), "built_at": built_at}
                        for r in frame.itertuples(index=False)]
                conn.execute(db.priorities.insert(), rows)
            # The CSV is written inside the transaction: if it cannot be written, the table is unchanged.
            if write_csv:
                _write_csv_atomic(frame, csv_path)
    except Exception as exc:
        log_etl_run(engine, "priorities", day, started, "failed", 0, 0, f"{type(exc).__name__}: {exc}")
        raise
    log_etl_run(engine, "priorities", day, started, "ok", len(frame), len(frame))
    sources = frame["risk_source"].value_counts().to_dict() if len(frame) else {}
    return PrioritiesResult(day, frame, csv_path, {k: int(sources.get(k, 0)) for k in ("model", "heuristic")})
