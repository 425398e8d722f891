"""Training the cancellation-risk model: evaluate on rolling origins, choose, then refit on everything.

``train(as_of, valid_days, model)`` learns from every appointment with an outcome up to and
including the clinic-local day ``as_of`` (``features.py``: the target and the features, each as of
the evening before its day). In three steps:

1. **Evaluate** (``evaluate.rolling_origin``): the last ``valid_days`` days up to as_of are the
   holdout. It is cut into weeks (``HOLDOUT_STEP_DAYS``, the daily chain's retraining cadence);
   each week is scored by models fitted on the days before it only, as the chain would have scored
   it: the candidates (``models.CANDIDATES``) and both baselines.
2. **Choose** (``evaluate.choose``): the candidate with the best mean ROC AUC over those weeks;
   the four-feature baseline instead when that candidate loses to it. Platt calibration is kept
   when it lowers the cross-fitted holdout log loss (``evaluate.choose_calibration``).
3. **Refit**: the chosen kind is fitted again on all finished appointments up to as_of (the most
   recent ``evaluate.MAX_TRAIN_ROWS``), holdout weeks included, so no recent day is left out of what
   the saved model learned. Its calibration map is fitted on the holdout's out-of-sample risks.

``metrics.json`` holds the holdout figures of the model as it was chosen (``holdout``: appointments
booked before the scoring evening first, same-day bookings, all), the baselines on the same weeks,
and what the saved model was trained on (``deployed``). ``docs/model.md`` explains each key.

Outputs: ``outputs/model/model.joblib`` (the ``models.RiskModel`` and its metadata),
``outputs/model/metrics.json`` and a ``model_runs`` row, written together at the end. Too little
data, a single outcome, or an ``as_of`` outside the appointments' days raise ``NotEnoughData``
(exit 2) and write nothing.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import sklearn
import sqlalchemy as sa
from threadpoolctl import threadpool_limits

from clinic_lib.core import db
from clinic_lib.core.clinic_days import evening_day
from clinic_lib.core.config import get_settings
from clinic_lib.core.errors import UserError
from clinic_lib.core.migrate import ensure_schema
from clinic_lib.core.timeutil import utc_now_text
from clinic_lib.modeling import evaluate as E
from clinic_lib.modeling import features as F
from clinic_lib.modeling import models as M
from clinic_lib.modeling.evaluate import NotEnoughData

MIN_FINISHED = 500
HOLDOUT_STEP_DAYS = 7

__all__ = ["train", "TrainResult", "NotEnoughData", "training_table"]


# --- data ----------------------------------------------------------------------------------------

def training_table(engine, as_of: dt.date, settings=None) -> pd.DataFrame:
    """Features + target of every appointment up to and including ``as_of`` with an outcome,
    sorted by day (then appointment id)."""
    settings = settings or get_settings()
    with engine.connect() as conn:
        appts = F.read_appointments(conn, "local_date <= ?", (as_of.isoformat(),))
        patients = F.read_patients(conn)
    table = F.feature_frame(appts, patients, settings.clinic_tz, settings.late_cancel_hours)
    table = table[table["eligible"]].sort_values(["local_date", "appointment_id"], kind="stable")
    return table.reset_index(drop=True)


def appointment_days(engine) -> tuple[str | None, str | None]:
    """The first and last clinic day holding any appointment (any status)."""
    with engine.connect() as conn:
        first, last = conn.execute(sa.select(sa.func.min(db.appointments.c.local_date),
                                             sa.func.max(db.appointments.c.local_date))).one()
    return (None if first is None else str(first)[:10]), (None if last is None else str(last)[:10])


def check_as_of(engine, as_of: dt.date) -> None:
    first, last = appointment_days(engine)
    if first is None:
        raise NotEnoughData("too little history to train: the database holds no appointments; "
                            "no model was written")
    if as_of.isoformat() < first:
        raise NotEnoughData(f"as_of {as_of} is before the first appointment in the database ({first}): "
                            "nothing to learn from; no model was written")
    if as_of.isoformat() > last:
        raise NotEnoughData(f"as_of {as_of} is after the last appointment in the database ({last}): "
                            "give an as_of inside the appointments' days; no model was written")


def check_table(table: pd.DataFrame, holdout_start: str, as_of: dt.date) -> None:
    n = len(table)
    if n < MIN_FINISHED:
        raise NotEnoughData(f"too little history to train: {n} finished appointments up to as_of {as_of}, "
                            f"need at least {MIN_FINISHED}; no model was written")
    failed = int(table["target"].sum())
    if failed == 0:
        raise NotEnoughData(f"too little history to train: no no-shows or late cancellations among the {n} "
                            f"finished appointments up to as_of {as_of}; no model was written")
    if failed == n:
        raise NotEnoughData(f"too little history to train: every one of the {n} finished appointments up to "
                            f"as_of {as_of} failed (no completed visit); no model was written")
    holdout = table[table["local_date"] >= holdout_start]
    if holdout["target"].nunique() < 2:
        raise NotEnoughData(f"too little history to train: the holdout days {holdout_start}..{as_of} hold "
                            f"{len(holdout)} finished appointments with {holdout['target'].nunique()} outcome(s), "
                            "need both (check as_of and valid_days against the days in the database); "
                            "no model was written")


def data_fingerprint(table: pd.DataFrame) -> str:
    cols = table[["appointment_id", "local_date", "target"]].sort_values("appointment_id")
    h = hashlib.sha256(pd.util.hash_pandas_object(cols, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


# --- training ------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    model_version: str
    kind: str
    metrics: dict
    rolling: E.RollingOrigin
    holdout: pd.DataFrame  # the holdout rows with ``risk``: the chosen model's out-of-sample risk
    model: M.RiskModel
    model_path: Path | None
    metrics_path: Path | None
    seconds: float


def train(as_of=None, valid_days: int = 28, model: str = "auto", engine=None, out_dir: Path | None = None,
          write: bool = True, max_train_rows: int | None = E.MAX_TRAIN_ROWS,
          retrain_reason: str = "") -> TrainResult:
    """Evaluate, choose, refit and (with ``write``) save the model; see the module doc.
    ``retrain_reason``: why the chain retrains (``retraining.retrain_decision``), kept in metrics.json."""
    with threadpool_limits(limits=M.TRAIN_THREADS, user_api="openmp"):
        return _train(as_of, valid_days, model, engine, out_dir, write, max_train_rows, retrain_reason)


def _train(as_of, valid_days, model, engine, out_dir, write, max_train_rows, retrain_reason="") -> TrainResult:
    t0 = time.perf_counter()
    settings = get_settings()
    as_of = evening_day(as_of)
    valid_days = int(valid_days)
    if valid_days < 1:
        raise UserError(f"valid_days must be at least 1, got {valid_days}")
    if model != "auto" and model not in M.CANDIDATES:
        raise UserError(f"unknown model {model!r}: expected auto, {', '.join(M.CANDIDATES)}")
    candidates = list(M.CANDIDATES if model == "auto" else (model,))
    engine = engine or db.make_engine()
    ensure_schema(engine)
    check_as_of(engine, as_of)
    table = training_table(engine, as_of, settings)
    origins = E.holdout_origins(as_of, valid_days, HOLDOUT_STEP_DAYS)
    check_table(table, origins[0], as_of)
    k = settings.call_capacity

    # 1. Evaluate every candidate and both baselines on the holdout weeks.
    ro = E.rolling_origin(table, origins, HOLDOUT_STEP_DAYS, candidates + list(M.BASELINES),
                          last_day=as_of.isoformat(), max_train_rows=max_train_rows)
    # 2. Choose the kind, then the calibration, on those out-of-sample risks.
    kind, reason = E.choose(ro, candidates)
    scored = ro.scored
    y = scored["target"].to_numpy()
    calibration = E.choose_calibration(scored[kind].to_numpy(), y, scored["origin"].to_numpy())
    holdout = scored.assign(risk=calibration.pop("risk"))
    # 3. Refit the chosen kind on everything up to as_of, its calibration on the holdout's risks.
    deployed = E.rows_before(table, (as_of + dt.timedelta(days=1)).isoformat(), max_train_rows)
    estimator = M.fit_kind(kind, deployed[F.FEATURES], deployed["target"].to_numpy())
    platt = M.Platt.fit(scored[kind].to_numpy(), y) if calibration["method"] == "sigmoid" else None
    risk_model = M.RiskModel(kind, estimator, platt)

    trained_at = utc_now_text()
    stamp = trained_at[:19].replace("-", "").replace(":", "")
    version = f"{kind}-{as_of.isoformat()}-{stamp}Z-{uuid.uuid4().hex[:4]}"
    metrics = _metrics(version, kind, reason, as_of, valid_days, trained_at, settings, ro, holdout,
                       calibration, platt, deployed, k)
    metrics["retrain_reason"] = retrain_reason or "trained on request"
    fingerprint = data_fingerprint(table)
    meta = {
        "model_format": M.MODEL_FORMAT, "pipeline": risk_model, "features": list(F.FEATURES),
        "feature_version": F.FEATURE_VERSION, "sklearn_version": sklearn.__version__, "model_kind": kind,
        "model_version": version, "as_of": as_of.isoformat(), "trained_at": trained_at,
        "deployed": metrics["deployed"], "data_fingerprint": fingerprint,
        "late_cancel_hours": settings.late_cancel_hours, "clinic_tz": str(settings.clinic_tz),
        "holdout": {p: {key: v for key, v in metrics["holdout"][p].items() if key != "calibration_bins"}
                    for p in E.POPULATIONS},
    }
    model_path = metrics_path = None
    if write:
        model_path, metrics_path = _write(engine, settings, out_dir, meta, metrics, fingerprint)
    return TrainResult(version, kind, metrics, ro, holdout, risk_model, model_path, metrics_path,
                       time.perf_counter() - t0)


def _metrics(version, kind, reason, as_of, valid_days, trained_at, settings, ro, holdout, calibration,
             platt, deployed, k) -> dict:
    """metrics.json (see docs/model.md)."""
    y = holdout["target"].to_numpy()
    means = {p: ro.mean_auc(p) for p in ("all", "booked_before_evening")}
    per_origin = ro.per_origin("all").merge(
        ro.per_origin("booked_before_evening")[["origin", "n"] + ro.models], on="origin",
        suffixes=("", "_booked_before_evening"))
    figures = E.population_figures(holdout, holdout["risk"].to_numpy(), k)
    return {
        "model_version": version, "model_kind": kind, "as_of": as_of.isoformat(), "valid_days": valid_days,
        "trained_at": trained_at, "late_cancel_hours": settings.late_cancel_hours,
        "clinic_tz": str(settings.clinic_tz),
        "holdout": {
            "start": holdout["local_date"].min(), "end": holdout["local_date"].max(),
            "origins": ro.origins, "step_days": HOLDOUT_STEP_DAYS,
            **figures,
            "by_age_band": E.group_figures(y, holdout["risk"], holdout["age_band"]),
            "by_gender": E.group_figures(y, holdout["risk"], holdout["gender"]),
        },
        "baselines": {
            name: {**E.population_figures(holdout, holdout[name].to_numpy(), k),
                   "mean_roc_auc": means["all"][name],
                   "mean_roc_auc_booked_before_evening": means["booked_before_evening"][name]}
            for name in M.BASELINES},
        "choice": {"chosen": kind, "reason": reason, "candidates": [m for m in ro.models if m not in M.BASELINES],
                   "mean_roc_auc": means["all"], "mean_roc_auc_booked_before_evening": means["booked_before_evening"],
                   "per_origin": per_origin.to_dict("records")},
        "calibration": {**calibration, "platt": None if platt is None else {"a": platt.a, "b": platt.b},
                        "risk_floor": M.RISK_FLOOR},
        "deployed": {"kind": kind, "train_start": deployed["local_date"].iloc[0],
                     "train_end": deployed["local_date"].iloc[-1], "rows": int(len(deployed)),
                     "positives": int(deployed["target"].sum()), "calibration": calibration["method"],
                     "calibration_start": holdout["local_date"].min() if platt is not None else None,
                     "calibration_end": holdout["local_date"].max() if platt is not None else None,
                     "calibration_rows": int(len(holdout)) if platt is not None else 0},
        "definitions": {
            "target": f"no-show, or canceled less than {settings.late_cancel_hours:g} h before the start "
                      "(canceled without canceled_at counts as late); early cancellations are not rows",
            "booked_before_evening": "appointments booked before the clinic-local midnight that starts their "
                                     "day: the ones an evening call list can hold",
            "same_day": "appointments booked on their own day, after the evening list was made",
            "holdout": f"the last {valid_days} days up to as_of; each {HOLDOUT_STEP_DAYS}-day week scored by "
                       "models fitted on the days before it only",
            "precision_at_k": "mean over holdout days of the share of failures among that day's k highest "
                              "risks (k = CALL_CAPACITY)",
            "recall_top_20pct": "share of all holdout failures found in the 20 % highest risks",
            "calibration_error": "mean absolute gap between mean predicted risk and observed rate over "
                                 f"{E.CALIBRATION_BINS} equal-count bins",
            "mean_roc_auc": "mean over the holdout weeks of each model's ROC AUC; the choice compares these",
        },
    }


def _write(engine, settings, out_dir, meta, metrics, fingerprint) -> tuple[Path, Path]:
    """model.joblib, metrics.json and the model_runs row, replaced together at the end."""
    out_dir = Path(out_dir) if out_dir else settings.model_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path, metrics_path = out_dir / "model.joblib", out_dir / "metrics.json"
    tmp = model_path.with_suffix(".joblib.tmp")
    joblib.dump(meta, tmp, compress=3)
    tmp_m = metrics_path.with_suffix(".json.tmp")
    tmp_m.write_text(json.dumps(plain(metrics), indent=2, allow_nan=False))
    h, d = metrics["holdout"], metrics["deployed"]
    before = h["booked_before_evening"]
    try:
        with db.begin_write(engine) as conn:
            conn.execute(db.model_runs.insert().values(
                model_version=meta["model_version"], trained_at=meta["trained_at"],
                as_of=_d(conn, meta["as_of"]), model_kind=meta["model_kind"],
                train_start=_d(conn, d["train_start"]), train_end=_d(conn, d["train_end"]),
                valid_start=_d(conn, h["start"]), valid_end=_d(conn, h["end"]),
                n_train=d["rows"], n_valid=h["all"]["n"],
                roc_auc=before["roc_auc"], average_precision=before["average_precision"],
                brier=before["brier"], log_loss=before["log_loss"], base_rate=before["base_rate"],
                data_fingerprint=fingerprint, model_path=str(model_path)))
            os.replace(tmp, model_path)
            os.replace(tmp_m, metrics_path)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_m.unlink(missing_ok=True)
    return model_path, metrics_path


def plain(value):
    """``value`` with numpy scalars as Python numbers and NaN as None: strict JSON."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else float(value)
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _d(conn, text):
    if text is None:
        return None
    return text if db.is_sqlite(conn) else dt.date.fromisoformat(text)


# --- figures for the notebook ----------------------------------------------------------------------

def rolling_table(result: TrainResult, population: str = "booked_before_evening") -> pd.DataFrame:
    """ROC AUC per holdout week of every model and baseline on ``population``, with the means."""
    table = result.rolling.per_origin(population)
    means = result.rolling.mean_auc(population)
    mean_row = {"origin": "mean", "days": "", "n": int(table["n"].sum()), "base_rate": None, **means}
    return pd.concat([table, pd.DataFrame([mean_row])], ignore_index=True).set_index("origin")


def summary_table(result: TrainResult, population: str = "booked_before_evening") -> pd.DataFrame:
    """The holdout figures of the model and both baselines side by side, for one population."""
    keys = ["n", "base_rate", "mean_risk", "roc_auc", "average_precision", "precision_at_k",
            "recall_top_20pct", "brier", "log_loss", "calibration_error", "distinct_risks"]
    m = result.metrics
    columns = {f"model ({result.kind})": m["holdout"][population]}
    columns.update({f"baseline: {b}": m["baselines"][b][population] for b in M.BASELINES})
    return pd.DataFrame({name: [f[key] for key in keys] for name, f in columns.items()}, index=keys)


def permutation_importances(result: TrainResult, n_repeats: int = 3, max_rows: int = 20000,
                            seed: int = 0) -> pd.DataFrame:
    """Drop in ROC AUC when one feature is shuffled, for the last holdout week's model on that week
    (a model that never saw those rows)."""
    fits = result.rolling.last_fits
    rows = result.holdout[result.holdout["origin"] == result.rolling.origins[-1]["origin"]]
    if result.kind not in fits or rows["target"].nunique() < 2:
        return pd.DataFrame(columns=["feature", "importance", "std"])
    if len(rows) > max_rows:
        rows = rows.sample(max_rows, random_state=seed)
    model, X, y = fits[result.kind], rows[F.FEATURES], rows["target"].to_numpy()
    rng = np.random.default_rng(seed)
    base = E.roc_auc(y, model.predict_proba(X)[:, 1])
    out = []
    for col in F.FEATURES:
        drops = []
        for _ in range(n_repeats):
            shuffled = X.copy()
            shuffled[col] = rng.permutation(shuffled[col].to_numpy())
            drops.append(base - E.roc_auc(y, model.predict_proba(shuffled)[:, 1]))
        out.append({"feature": col, "importance": float(np.mean(drops)), "std": float(np.std(drops))})
    return pd.DataFrame(out).sort_values("importance", ascending=False).reset_index(drop=True)


def show_figure(fig) -> None:
    """Show a matplotlib figure in the notebook with its axes' titles as the image's alternative
    text (the run report writes it as the ``alt`` of the image), and close it, so that the
    inline backend does not show it a second time."""
    import matplotlib.pyplot as plt
    from IPython.display import display
    alt = "; ".join(ax.get_title() for ax in fig.axes if ax.get_title()) or "figure"
    display(fig, metadata={"image/png": {"alt": alt}})
    plt.close(fig)


def plot_curves(result: TrainResult, population: str = "booked_before_evening"):
    """ROC and precision-recall curves of the model and both baselines on the holdout."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve
    mask = E.population_masks(result.holdout)[population]
    h = result.holdout[mask]
    y = h["target"].to_numpy()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    label = population.replace("_", " ")
    if len(np.unique(y)) == 2:
        for name, p in ((f"model ({result.kind})", h["risk"]), ("four-feature baseline", h["four_feature"]),
                        ("lead time alone", h["lead_time"])):
            fpr, tpr, _ = roc_curve(y, p)
            ax1.plot(fpr, tpr, label=f"{name}: AUC {roc_auc_score(y, p):.3f}")
            prec, rec, _ = precision_recall_curve(y, p)
            ax2.plot(rec, prec, label=f"{name}: AP {average_precision_score(y, p):.3f}")
        ax2.axhline(y.mean(), color="k", ls=":", lw=1, label=f"base rate {y.mean():.3f}")
    ax1.plot([0, 1], [0, 1], "k:", lw=1)
    ax1.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC (holdout, {label})")
    ax2.set(xlabel="recall", ylabel="precision", title=f"Precision-recall (holdout, {label})")
    ax1.legend(loc="lower right")
    ax2.legend(loc="upper right")
    fig.tight_layout()
    return fig


def plot_calibration(result: TrainResult):
    """Mean predicted risk vs observed rate per equal-count bin (holdout, all appointments)."""
    import matplotlib.pyplot as plt
    bins = result.metrics["holdout"]["all"]["calibration_bins"]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    top = max([b["mean_predicted"] for b in bins] + [b["observed_rate"] for b in bins] + [0.05])
    ax.plot([0, top], [0, top], "k:", lw=1, label="perfect")
    ax.plot([b["mean_predicted"] for b in bins], [b["observed_rate"] for b in bins], "o-",
            label=f"model: gap {result.metrics['holdout']['all']['calibration_error']:.3f} "
                  f"({result.metrics['calibration']['method']})")
    ax.set(xlabel="mean predicted risk", ylabel="observed failure rate",
           title="Calibration (holdout, 10 equal-count bins)")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_importances(importances: pd.DataFrame):
    import matplotlib.pyplot as plt
    frame = importances.iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(frame) + 1))
    ax.barh(frame["feature"], frame["importance"], xerr=frame["std"], color="tab:blue")
    ax.set(xlabel="drop in ROC AUC when shuffled", title="Permutation importance (last holdout week)")
    fig.tight_layout()
    return fig
