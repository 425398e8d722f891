"""Scoring a clinic day with the saved cancellation-risk model.

``score_day(D)`` gives every appointment of clinic-local day D still ``booked`` a calibrated risk
(the probability of a no-show or a late cancellation, between ``models.RISK_FLOOR`` and
1 - ``models.RISK_FLOOR``), a bucket and the model version:

- bucket: ``low`` below the first RISK_BUCKET_THRESHOLDS value (default 0.10), ``medium`` below the
  second (default 0.25), ``high`` from there on;
- written to ``outputs/scores/cancellation_scores_D.csv``, to the combined
  ``outputs/scores/cancellation_scores.csv`` (re-scoring D replaces D's rows) and to the
  ``risk_scores`` table (D's rows replaced in one transaction). Scoring D twice with the same model
  gives the same files and rows (the CSVs carry no timestamp; the table's ``scored_at`` does).
- a day with nothing booked gives a file with only its header (and removes D's old scores).

Only the day's patients are read (indexed queries on ``local_date`` and ``(patient_id, appt_start)``),
and the model is loaded once per process, so scoring a day takes a fraction of a second.
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import sklearn

from clinic_lib.core import db
from clinic_lib.core.config import get_settings
from clinic_lib.core.errors import CannotRun
from clinic_lib.core.migrate import ensure_schema
from clinic_lib.core.timeutil import local_day_bounds_utc, parse_day, utc_now_text
from clinic_lib.ingest.refresh import bulk_insert
from clinic_lib.modeling import features as F
from clinic_lib.modeling import models as M

SCORE_COLUMNS = ["day", "appointment_id", "patient_id", "physio_id", "appt_start", "local_time",
                 "risk", "risk_bucket", "model_version"]
_CACHE: dict = {}


# --- the saved model ----------------------------------------------------------------------------

def model_path(settings=None) -> Path:
    return (settings or get_settings()).model_dir / "model.joblib"


def _minor(version: str) -> tuple:
    return tuple(version.split(".")[:2])


def incompatibility(meta: dict) -> str | None:
    """Why a saved model cannot score with the current code, or None if it can."""
    if not isinstance(meta, dict) or "pipeline" not in meta:
        return "the file is not a Clinic Ops model (no pipeline/metadata)"
    if meta.get("model_format", 1) != M.MODEL_FORMAT:
        return (f"it was saved by older code (model format {meta.get('model_format', 1)}, this code reads "
                f"format {M.MODEL_FORMAT}: a model refitted up to as_of with a ranking-preserving calibration)")
    if meta.get("features") != list(F.FEATURES):
        missing = sorted(set(F.FEATURES) - set(meta.get("features") or []))
        extra = sorted(set(meta.get("features") or []) - set(F.FEATURES))
        return (f"its features do not match the current code (missing {missing or 'none'}, "
                f"extra {extra or 'none'}, or a different order)")
    if meta.get("feature_version") != F.FEATURE_VERSION:
        return (f"it was built with feature version {meta.get('feature_version')}, the code computes "
                f"version {F.FEATURE_VERSION}")
    if _minor(str(meta.get("sklearn_version", ""))) != _minor(sklearn.__version__):
        return (f"it was saved by scikit-learn {meta.get('sklearn_version')}, this is "
                f"{sklearn.__version__} (a different minor version may not load the same model)")
    settings = get_settings()
    if meta.get("late_cancel_hours") is not None and float(meta["late_cancel_hours"]) != settings.late_cancel_hours:
        return (f"it was trained with LATE_CANCEL_HOURS={meta['late_cancel_hours']:g}, the setting is now "
                f"{settings.late_cancel_hours:g} (the history features would mean something else)")
    if meta.get("clinic_tz") and meta["clinic_tz"] != str(settings.clinic_tz):
        return f"it was trained for CLINIC_TZ={meta['clinic_tz']}, the setting is now {settings.clinic_tz}"
    return None


def load_model(path: Path | None = None, check: bool = True) -> dict:
    """The saved model and its metadata, loaded once per process (reloaded when the file changes)."""
    path = Path(path) if path else model_path()
    if not path.exists():
        raise CannotRun(f"no model at {path}: train first: clinic train")
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    meta = _CACHE.get(key)
    if meta is None:
        try:
            meta = joblib.load(path)
        except Exception as exc:  # a truncated file, another library's pickle
            raise CannotRun(f"cannot read the model {path}: {exc}; retrain: clinic train") from None
        _CACHE.clear()
        _CACHE[key] = meta
    if check:
        reason = incompatibility(meta)
        if reason:
            raise CannotRun(f"refusing the model {path}: {reason}; retrain: clinic train")
    return meta


def model_is_stale(max_age_days: float | None = None, path: Path | None = None, now=None) -> bool:
    """True when there is no usable model, or it was trained more than ``max_age_days`` ago."""
    settings = get_settings()
    max_age = settings.model_max_age_days if max_age_days is None else max_age_days
    try:
        meta = load_model(path or model_path(settings))
    except CannotRun:
        return True
    trained = pd.Timestamp(meta["trained_at"])
    now = pd.Timestamp(now) if now is not None else pd.Timestamp.now(tz="UTC")
    return (now - trained) > pd.Timedelta(days=max_age)


def needs_training() -> bool:
    """For run_daily: train when the model is missing, unusable or older than MODEL_MAX_AGE_DAYS."""
    return model_is_stale()


# --- scoring ------------------------------------------------------------------------------------

def bucket(risk, thresholds) -> np.ndarray:
    low, high = thresholds
    risk = np.asarray(risk, float)
    return np.where(risk < low, "low", np.where(risk < high, "medium", "high")).astype(object)


@dataclass
class ScoreResult:
    day: dt.date
    scores: pd.DataFrame
    day_csv: Path
    combined_csv: Path
    model_version: str


def _param_day(conn, day: dt.date):
    return day.isoformat() if db.is_sqlite(conn) else day


@dataclass
class DayRows:
    """What scoring day D reads: D's appointments, those still booked, their patients' earlier
    appointments with an outcome, and the patients."""
    day_rows: pd.DataFrame
    targets: pd.DataFrame
    history: pd.DataFrame
    patients: pd.DataFrame


def read_day(conn, day: dt.date, settings) -> DayRows:
    """Read only the day's rows and its patients' history (indexed queries)."""
    day_rows = F.read_appointments(conn, "local_date = ?", (day.isoformat(),))
    targets = day_rows[day_rows["status"] == "booked"]
    if targets.empty:
        return DayRows(day_rows, targets, targets, targets)
    cutoff, _ = local_day_bounds_utc(day, settings.clinic_tz)
    ids = [int(i) for i in targets["patient_id"].unique()]
    # Uses the (patient_id, appt_start) index: only the day's patients' earlier appointments with an
    # outcome, and only the columns the history features read. Same-day siblings (any status) come
    # from the day's own rows.
    parts = [F.read_history(conn, f"patient_id IN ({', '.join('?' * len(chunk))}) AND appt_start < ? "
                                  "AND status <> 'booked'", (*chunk, cutoff))
             for chunk in (ids[i:i + 900] for i in range(0, len(ids), 900))]
    history = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    return DayRows(day_rows, targets, history, F.read_patients(conn, ids))


def day_features(conn, day: dt.date, settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(appointments still booked on D, their features), reading only the day's patients."""
    rows = read_day(conn, day, settings)
    targets = rows.targets
    if targets.empty:
        return targets, F.build_features(targets, targets, targets, settings.clinic_tz, settings.late_cancel_hours)
    targets = targets.sort_values(["appt_start", "appointment_id"]).reset_index(drop=True)
    X = F.build_features(targets, rows.history, rows.patients, settings.clinic_tz, settings.late_cancel_hours,
                         same_day=rows.day_rows)
    return targets, X


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    frame.to_csv(tmp, index=False, lineterminator="\n")
    os.replace(tmp, path)


def score_day(day, engine=None, model_file: Path | None = None) -> ScoreResult:
    """Score day D (see the module doc); returns the scores frame and the files written."""
    settings = get_settings()
    day = parse_day(day)
    meta = load_model(model_file or model_path(settings))
    engine = engine or db.make_engine()
    ensure_schema(engine)
    with engine.connect() as conn:
        targets, X = day_features(conn, day, settings)
    version = meta["model_version"]
    if len(targets):
        with _one_thread():  # a few rows: threads only cost
            risk = meta["pipeline"].predict_proba(X[meta["features"]])[:, 1]
        risk = M.clip_risk(risk)  # strictly inside (0, 1), whatever the file holds
        local = targets["appt_start"].dt.tz_convert(settings.clinic_tz)
        scores = pd.DataFrame({
            "day": day.isoformat(), "appointment_id": targets["appointment_id"].to_numpy(),
            "patient_id": targets["patient_id"].to_numpy(), "physio_id": targets["physio_id"].to_numpy(),
            "appt_start": targets["appt_start"].dt.strftime("%Y-%m-%dT%H:%M:%S+00:00").to_numpy(),
            "local_time": local.dt.strftime("%H:%M").to_numpy(),
            "risk": np.round(risk, 4), "risk_bucket": bucket(np.round(risk, 4), settings.risk_thresholds),
            "model_version": version})
    else:
        scores = pd.DataFrame({c: pd.Series(dtype=object) for c in SCORE_COLUMNS})
    scores = scores[SCORE_COLUMNS]

    rows = pd.DataFrame({"day": day.isoformat(), "appointment_id": scores["appointment_id"].astype("int64"),
                         "risk": scores["risk"].astype(float), "risk_bucket": scores["risk_bucket"],
                         "model_version": version, "scored_at": utc_now_text()})
    with db.begin_write(engine) as conn:
        conn.execute(db.risk_scores.delete().where(db.risk_scores.c.day == _param_day(conn, day)))
        bulk_insert(conn, "risk_scores", rows)

    out = settings.scores_dir
    day_csv, combined_csv = out / f"cancellation_scores_{day.isoformat()}.csv", out / "cancellation_scores.csv"
    _write_csv(scores, day_csv)
    if combined_csv.exists():
        old = pd.read_csv(combined_csv, dtype=str, keep_default_na=False)
        old = old[old["day"] != day.isoformat()] if "day" in old.columns else old.iloc[0:0]
    else:
        old = pd.DataFrame(columns=SCORE_COLUMNS)
    new = pd.DataFrame({c: scores[c].astype(object).where(scores[c].notna(), "").astype(str)
                        for c in SCORE_COLUMNS if c != "risk"})
    new["risk"] = [repr(float(v)) for v in scores["risk"]]
    new = new[SCORE_COLUMNS]
    combined = pd.concat([old.reindex(columns=SCORE_COLUMNS), new], ignore_index=True)
    combined = combined.sort_values(["day", "appt_start", "appointment_id"],
                                    key=lambda s: s.astype(str) if s.name != "appointment_id"
                                    else pd.to_numeric(s), kind="stable")
    _write_csv(combined, combined_csv)
    return ScoreResult(day, scores, day_csv, combined_csv, version)


_THREADS: list = []


def _one_thread():
    """OpenMP limited to one thread (the controller is built once: building it scans the loaded
    libraries)."""
    if not _THREADS:
        from threadpoolctl import ThreadpoolController
        _THREADS.append(ThreadpoolController())
    return _THREADS[0].limit(limits=1, user_api="openmp")
