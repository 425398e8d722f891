"""Training the cancellation-risk model: a time split, three candidates, calibration, metrics.

``train(as_of, valid_days, model)`` uses every appointment with an outcome up to and including the
clinic-local day ``as_of`` (see ``features.py`` for the target and the features). Rows are split
by day, never shuffled::

    [ train .................. | calibration | validation: the last valid_days days up to as_of ]

The train slice keeps its most recent 200 000 rows (``MAX_TRAIN_ROWS``), which keeps training a
~1M-appointment clinic within a minute; older rows add little once the history features carry them.

The candidates (logistic regression, random forest, histogram gradient boosting) are fitted on the
train slice, calibrated on the calibration slice (the ~20 % of pre-validation rows just before the
validation window, at most ~60 000 rows; isotonic with >= 1000 rows, else sigmoid) via ``FrozenEstimator`` +
``CalibratedClassifierCV``, and compared on the validation window by log loss; ``model='auto'``
keeps the best. The saved model is exactly the one evaluated (no refit on the validation days),
so ``metrics.json`` describes the model that scores.

Outputs: ``outputs/model/model.joblib`` (pipeline + metadata), ``outputs/model/metrics.json`` and
a ``model_runs`` row. Too little data (< 500 finished appointments, no failures in the train slice,
an empty calibration or validation slice) raises ``UserError`` and writes nothing.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import sklearn
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler
from threadpoolctl import threadpool_limits

from . import db
from . import features as F
from .config import get_settings
from .errors import UserError
from .migrate import ensure_schema
from .timeutil import parse_day, today_local, utc_now_text

MODEL_KINDS = ("logreg", "rf", "hgb")
MIN_FINISHED = 500
CALIB_FRACTION = 0.2
MAX_CALIB_ROWS = 60_000  # calibration days hold ~20 % of the rows, but not more than this
MAX_TRAIN_ROWS = 200_000  # the most recent rows of the train slice (keeps 20x training in budget)
# OpenMP threads for the gradient boosting. On a small shared machine, spinning OpenMP workers make
# HistGradientBoosting 10x slower than one thread; raise CLINIC_TRAIN_THREADS on a dedicated box.
TRAIN_THREADS = int(os.environ.get("CLINIC_TRAIN_THREADS") or 1)
CALIBRATION_BINS = 10


class NotEnoughData(UserError):
    """Too little history to train; no model was written."""


# --- pipelines --------------------------------------------------------------------------------

def make_pipeline(kind: str, numeric=None, categorical=None, seed: int = 0, n_rows: int | None = None) -> Pipeline:
    """The preprocessing + classifier of one candidate (``n_rows``: training rows, sizes the forest)."""
    max_samples = min(0.5, 50_000 / n_rows) if n_rows else 0.5
    numeric = list(F.NUMERIC if numeric is None else numeric)
    categorical = list(F.CATEGORICAL if categorical is None else categorical)
    if kind == "logreg":
        pre = ColumnTransformer([("num", StandardScaler(), numeric),
                                 ("cat", OneHotEncoder(handle_unknown="ignore"), categorical)])
        return Pipeline([("pre", pre), ("clf", LogisticRegression(max_iter=2000, C=0.5))])
    ordinal = OrdinalEncoder(handle_unknown="use_encoded_value",
                             unknown_value=-1 if kind == "rf" else np.nan)
    pre = ColumnTransformer([("num", "passthrough", numeric), ("cat", ordinal, categorical)])
    if kind == "rf":
        # Each tree sees at most 50 000 bootstrap rows: enough for 300 leaves, and fast at 20x.
        clf = RandomForestClassifier(n_estimators=30, min_samples_leaf=50, max_leaf_nodes=300,
                                     max_features=0.4, max_samples=max_samples, n_jobs=TRAIN_THREADS,
                                     random_state=seed)
    elif kind == "hgb":
        cat_mask = [False] * len(numeric) + [True] * len(categorical)
        clf = HistGradientBoostingClassifier(learning_rate=0.1, max_iter=100, max_leaf_nodes=31,
                                             min_samples_leaf=40, l2_regularization=1.0,
                                             categorical_features=cat_mask, early_stopping=False,
                                             random_state=seed)
    else:
        raise UserError(f"unknown model {kind!r}: expected auto, {', '.join(MODEL_KINDS)}")
    return Pipeline([("pre", pre), ("clf", clf)])


def calibrate(fitted, X_cal: pd.DataFrame, y_cal) -> CalibratedClassifierCV:
    method = "isotonic" if len(X_cal) >= 1000 else "sigmoid"
    return CalibratedClassifierCV(FrozenEstimator(fitted), method=method).fit(X_cal, y_cal)


# --- metrics ----------------------------------------------------------------------------------

def calibration_bins(y, p, bins: int = CALIBRATION_BINS) -> list[dict]:
    """Quantile bins (equal counts) of the predicted risk: mean predicted vs observed rate."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    if len(p) == 0:
        return []
    order = np.argsort(p, kind="stable")
    out = []
    for chunk in np.array_split(order, min(bins, len(p))):
        if len(chunk):
            out.append({"n": int(len(chunk)), "mean_predicted": float(p[chunk].mean()),
                        "observed_rate": float(y[chunk].mean()),
                        "low": float(p[chunk].min()), "high": float(p[chunk].max())})
    return out


def calibration_error(bins: list[dict]) -> float | None:
    """Mean absolute gap between predicted and observed rate over the bins."""
    if not bins:
        return None
    return float(np.mean([abs(b["mean_predicted"] - b["observed_rate"]) for b in bins]))


def precision_at_k_per_day(y, p, days, k: int) -> float | None:
    """Mean over days of the precision among that day's k highest risks (all of them if fewer)."""
    frame = pd.DataFrame({"y": np.asarray(y), "p": np.asarray(p), "d": np.asarray(days)})
    if frame.empty:
        return None
    top = frame.sort_values(["d", "p"], ascending=[True, False], kind="stable").groupby("d").head(k)
    return float(top.groupby("d")["y"].mean().mean())


def recall_top_fraction(y, p, fraction: float = 0.2) -> float | None:
    y, p = np.asarray(y), np.asarray(p)
    if y.sum() == 0:
        return None
    n = max(1, int(round(len(p) * fraction)))
    top = np.argsort(-p, kind="stable")[:n]
    return float(y[top].sum() / y.sum())


def evaluate(y, p, days, k: int) -> dict:
    y, p = np.asarray(y, int), np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    two = len(np.unique(y)) == 2
    bins = calibration_bins(y, p)
    return {
        "n": int(len(y)),
        "base_rate": float(y.mean()) if len(y) else None,
        "mean_risk": float(p.mean()) if len(p) else None,
        "roc_auc": float(roc_auc_score(y, p)) if two else None,
        "average_precision": float(average_precision_score(y, p)) if two else None,
        "precision_at_k": precision_at_k_per_day(y, p, days, k),
        "k": int(k),
        "recall_top_20pct": recall_top_fraction(y, p, 0.2),
        "brier": float(brier_score_loss(y, p)) if len(y) else None,
        "log_loss": float(log_loss(y, p, labels=[0, 1])) if len(y) else None,
        "calibration_error": calibration_error(bins),
        "calibration_bins": bins,
    }


def group_metrics(y, p, groups) -> dict:
    """The main figures per group (age band, gender)."""
    frame = pd.DataFrame({"y": np.asarray(y, int), "p": np.asarray(p, float), "g": np.asarray(groups)})
    out = {}
    for g, part in frame.groupby("g", sort=True):
        two = part["y"].nunique() == 2
        out[str(g)] = {"n": int(len(part)), "base_rate": float(part["y"].mean()),
                       "mean_risk": float(part["p"].mean()),
                       "roc_auc": float(roc_auc_score(part["y"], part["p"])) if two else None,
                       "brier": float(brier_score_loss(part["y"], part["p"]))}
    return out


# --- data and split ---------------------------------------------------------------------------

def training_table(engine, as_of: dt.date, settings=None) -> pd.DataFrame:
    """Features + target of every appointment up to and including ``as_of`` with an outcome."""
    settings = settings or get_settings()
    with engine.connect() as conn:
        appts = F.read_appointments(conn, "local_date <= ?", (as_of.isoformat(),))
        patients = F.read_patients(conn)
    table = F.feature_frame(appts, patients, settings.clinic_tz, settings.late_cancel_hours)
    return table[table["eligible"]].reset_index(drop=True)


@dataclass
class Split:
    train: pd.DataFrame
    calib: pd.DataFrame
    valid: pd.DataFrame

    def window(self, part: str) -> tuple[str | None, str | None]:
        frame = getattr(self, part)
        return (frame["local_date"].min(), frame["local_date"].max()) if len(frame) else (None, None)


def time_split(table: pd.DataFrame, as_of: dt.date, valid_days: int,
               calib_fraction: float = CALIB_FRACTION, max_train_rows: int | None = MAX_TRAIN_ROWS) -> Split:
    """Split by clinic-local day: validation = the last ``valid_days`` days up to ``as_of``."""
    if valid_days < 1:
        raise UserError(f"valid_days must be at least 1, got {valid_days}")
    valid_start = (as_of - dt.timedelta(days=valid_days - 1)).isoformat()
    is_valid = table["local_date"] >= valid_start
    valid, pre = table[is_valid], table[~is_valid]
    # Calibration: the whole days just before the validation window holding ~calib_fraction of rows.
    per_day = pre.groupby("local_date").size().sort_index(ascending=False)
    need = min(calib_fraction * len(pre), MAX_CALIB_ROWS)
    calib_days, acc = [], 0
    for day, n in per_day.items():
        if acc >= need and calib_days:
            break
        calib_days.append(day)
        acc += n
    if len(calib_days) == len(per_day) and len(per_day) > 1:
        calib_days = calib_days[:-1]  # keep at least one day to train on
    is_calib = pre["local_date"].isin(calib_days)
    calib, train = pre[is_calib], pre[~is_calib]
    if max_train_rows and len(train) > max_train_rows:
        train = train.sort_values(["local_date", "appointment_id"]).iloc[-max_train_rows:]

    return Split(train, calib, valid)


def data_fingerprint(table: pd.DataFrame) -> str:
    cols = table[["appointment_id", "local_date", "target"]].sort_values("appointment_id")
    h = hashlib.sha256(pd.util.hash_pandas_object(cols, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


# --- training ---------------------------------------------------------------------------------

@dataclass
class TrainResult:
    model_version: str
    kind: str
    metrics: dict
    comparison: pd.DataFrame
    split: Split
    model: object
    baseline: object
    valid_risk: np.ndarray
    model_path: Path | None
    metrics_path: Path | None
    seconds: float
    extra: dict = field(default_factory=dict)


def _check_enough(table: pd.DataFrame, split: Split) -> None:
    if len(table) < MIN_FINISHED:
        raise NotEnoughData(f"too little history to train: {len(table)} finished appointments up to "
                            f"as_of, need at least {MIN_FINISHED}; no model was written")
    if split.train["target"].sum() == 0 or table["target"].sum() == 0:
        raise NotEnoughData("too little history to train: no no-shows or late cancellations in the "
                            "training days; no model was written")
    for part in ("train", "calib", "valid"):
        if len(getattr(split, part)) == 0:
            raise NotEnoughData(f"too little history to train: the {part} slice is empty (check as_of "
                                "and valid_days against the days in the database); no model was written")
    if split.calib["target"].nunique() < 2:
        raise NotEnoughData("too little history to train: the calibration slice has only one outcome; "
                            "no model was written")


def train(as_of=None, valid_days: int = 28, model: str = "auto", engine=None, out_dir: Path | None = None,
          write: bool = True, kinds=None, max_train_rows: int | None = MAX_TRAIN_ROWS) -> TrainResult:
    """Fit, compare, calibrate, evaluate and (with ``write``) save the model; see the module doc."""
    with threadpool_limits(limits=TRAIN_THREADS, user_api="openmp"):
        return _train(as_of, valid_days, model, engine, out_dir, write, kinds, max_train_rows)


def _train(as_of, valid_days, model, engine, out_dir, write, kinds, max_train_rows) -> TrainResult:
    t0 = time.perf_counter()
    settings = get_settings()
    as_of = parse_day(as_of) if as_of else today_local(settings.clinic_tz)
    valid_days = int(valid_days)
    if model != "auto" and model not in MODEL_KINDS:
        raise UserError(f"unknown model {model!r}: expected auto, {', '.join(MODEL_KINDS)}")
    engine = engine or db.make_engine()
    ensure_schema(engine)
    table = training_table(engine, as_of, settings)
    split = time_split(table, as_of, valid_days, max_train_rows=max_train_rows)
    _check_enough(table, split)
    cols = F.FEATURES
    Xtr, ytr = split.train[cols], split.train["target"].to_numpy()
    Xca, yca = split.calib[cols], split.calib["target"].to_numpy()
    Xva, yva = split.valid[cols], split.valid["target"].to_numpy()
    k = settings.call_capacity

    candidates = list(kinds or (MODEL_KINDS if model == "auto" else (model,)))
    rows, fitted = [], {}
    for kind in candidates:
        t = time.perf_counter()
        base = make_pipeline(kind, n_rows=len(Xtr)).fit(Xtr, ytr)
        cal = calibrate(base, Xca, yca)
        p = cal.predict_proba(Xva)[:, 1]
        m = evaluate(yva, p, split.valid["local_date"], k)
        fitted[kind] = (cal, p, m)
        rows.append({"model": kind, "log_loss": m["log_loss"], "brier": m["brier"], "roc_auc": m["roc_auc"],
                     "average_precision": m["average_precision"], "precision_at_k": m["precision_at_k"],
                     "calibration_error": m["calibration_error"], "seconds": time.perf_counter() - t})
    comparison = pd.DataFrame(rows).sort_values(["log_loss", "brier"]).reset_index(drop=True)
    best = comparison["model"].iloc[0]
    chosen, p_valid, m_valid = fitted[best]

    # Baseline: the patient's prior history only (logistic regression, calibrated the same way).
    hist_num = [c for c in F.HISTORY_FEATURES]
    base_pipe = Pipeline([("pre", ColumnTransformer([("num", StandardScaler(), hist_num)])),
                          ("clf", LogisticRegression(max_iter=1000))]).fit(split.train[hist_num], ytr)
    baseline = calibrate(base_pipe, split.calib[hist_num], yca)
    p_base = baseline.predict_proba(split.valid[hist_num])[:, 1]

    trained_at = utc_now_text()
    fingerprint = data_fingerprint(table)
    stamp = trained_at[:19].replace("-", "").replace(":", "")
    version = f"{best}-{as_of.isoformat()}-{stamp}Z-{uuid.uuid4().hex[:4]}"
    windows = {part: split.window(part) for part in ("train", "calib", "valid")}
    metrics = {
        "model_version": version, "model_kind": best, "as_of": as_of.isoformat(), "valid_days": valid_days,
        "trained_at": trained_at, "late_cancel_hours": settings.late_cancel_hours,
        "windows": {p: {"start": w[0], "end": w[1], "n": int(len(getattr(split, p))),
                        "positives": int(getattr(split, p)["target"].sum())} for p, w in windows.items()},
        "validation": m_valid,
        "baseline_prior_history": evaluate(yva, p_base, split.valid["local_date"], k),
        "by_age_band": group_metrics(yva, p_valid, split.valid["age_band"]),
        "by_gender": group_metrics(yva, p_valid, split.valid["gender"]),
        "comparison": comparison.to_dict("records"),
        "definitions": {
            "target": f"no-show, or canceled less than {settings.late_cancel_hours:g} h before the start "
                      "(canceled without canceled_at counts as late); early cancellations are not rows",
            "precision_at_k": "mean over validation days of the share of failures among that day's k "
                              "highest risks (k = CALL_CAPACITY)",
            "recall_top_20pct": "share of all validation failures found in the 20 % highest risks of the window",
            "calibration_error": "mean absolute gap between mean predicted risk and observed rate over "
                                 f"{CALIBRATION_BINS} equal-count bins",
        },
    }
    meta = {
        "pipeline": chosen, "features": list(F.FEATURES), "feature_version": F.FEATURE_VERSION,
        "sklearn_version": sklearn.__version__, "model_kind": best, "model_version": version,
        "as_of": as_of.isoformat(), "trained_at": trained_at, "windows": metrics["windows"],
        "data_fingerprint": fingerprint, "late_cancel_hours": settings.late_cancel_hours,
        "clinic_tz": str(settings.clinic_tz), "metrics": {k2: v for k2, v in m_valid.items()
                                                           if k2 != "calibration_bins"},
    }
    model_path = metrics_path = None
    if write:
        out_dir = Path(out_dir) if out_dir else settings.model_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        model_path, metrics_path = out_dir / "model.joblib", out_dir / "metrics.json"
        tmp = model_path.with_suffix(".joblib.tmp")
        joblib.dump(meta, tmp, compress=3)
        tmp_m = metrics_path.with_suffix(".json.tmp")
        tmp_m.write_text(json.dumps(metrics, indent=2, default=str))
        with db.begin_write(engine) as conn:
            conn.execute(db.model_runs.insert().values(
                model_version=version, trained_at=trained_at,
                as_of=as_of.isoformat() if db.is_sqlite(conn) else as_of, model_kind=best,
                train_start=_d(conn, windows["train"][0]), train_end=_d(conn, windows["train"][1]),
                valid_start=_d(conn, windows["valid"][0]), valid_end=_d(conn, windows["valid"][1]),
                n_train=int(len(split.train)), n_valid=int(len(split.valid)),
                roc_auc=m_valid["roc_auc"], average_precision=m_valid["average_precision"],
                brier=m_valid["brier"], log_loss=m_valid["log_loss"], base_rate=m_valid["base_rate"],
                data_fingerprint=fingerprint, model_path=str(model_path)))
            os.replace(tmp, model_path)
            os.replace(tmp_m, metrics_path)
    return TrainResult(version, best, metrics, comparison, split, chosen, baseline, p_valid,
                       model_path, metrics_path, time.perf_counter() - t0,
                       extra={"baseline_risk": p_base})


def _d(conn, text):
    if text is None:
        return None
    return text if db.is_sqlite(conn) else dt.date.fromisoformat(text)


def permutation_importances(result: TrainResult, n_repeats: int = 3, max_rows: int = 20000,
                            seed: int = 0) -> pd.DataFrame:
    """Permutation importance (drop in ROC AUC) of each feature on the validation window."""
    from sklearn.inspection import permutation_importance
    valid = result.split.valid
    if len(valid) > max_rows:
        valid = valid.sample(max_rows, random_state=seed)
    imp = permutation_importance(result.model, valid[F.FEATURES], valid["target"].to_numpy(),
                                 scoring="roc_auc", n_repeats=n_repeats, random_state=seed, n_jobs=1)
    return (pd.DataFrame({"feature": F.FEATURES, "importance": imp.importances_mean,
                          "std": imp.importances_std})
            .sort_values("importance", ascending=False).reset_index(drop=True))


# --- figures for the notebook -------------------------------------------------------------------

def show_figure(fig) -> None:
    """Show a matplotlib figure in the notebook with its axes' titles as the image's alternative
    text (the run report writes it as the ``alt`` of the image), and close it, so that the
    inline backend does not show it a second time."""
    import matplotlib.pyplot as plt
    from IPython.display import display
    alt = "; ".join(ax.get_title() for ax in fig.axes if ax.get_title()) or "figure"
    display(fig, metadata={"image/png": {"alt": alt}})
    plt.close(fig)


def plot_curves(result: TrainResult):
    """ROC and precision-recall curves of the model and the prior-history baseline (validation)."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve
    y = result.split.valid["target"].to_numpy()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, p in ((f"model ({result.kind})", result.valid_risk),
                    ("prior history only", result.extra["baseline_risk"])):
        fpr, tpr, _ = roc_curve(y, p)
        ax1.plot(fpr, tpr, label=f"{name}: AUC {roc_auc_score(y, p):.3f}")
        prec, rec, _ = precision_recall_curve(y, p)
        ax2.plot(rec, prec, label=f"{name}: AP {average_precision_score(y, p):.3f}")
    ax1.plot([0, 1], [0, 1], "k:", lw=1)
    ax1.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (validation window)")
    ax2.axhline(y.mean(), color="k", ls=":", lw=1, label=f"base rate {y.mean():.3f}")
    ax2.set(xlabel="recall", ylabel="precision", title="Precision-recall (validation window)")
    ax1.legend(loc="lower right")
    ax2.legend(loc="upper right")
    fig.tight_layout()
    return fig


def plot_calibration(result: TrainResult):
    """Mean predicted risk vs observed rate per equal-count bin (validation window)."""
    import matplotlib.pyplot as plt
    bins = result.metrics["validation"]["calibration_bins"]
    base = result.metrics["baseline_prior_history"]["calibration_bins"]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    top = max([b["mean_predicted"] for b in bins + base] + [b["observed_rate"] for b in bins + base] + [0.05])
    ax.plot([0, top], [0, top], "k:", lw=1, label="perfect")
    ax.plot([b["mean_predicted"] for b in bins], [b["observed_rate"] for b in bins], "o-",
            label=f"model: gap {result.metrics['validation']['calibration_error']:.3f}")
    ax.plot([b["mean_predicted"] for b in base], [b["observed_rate"] for b in base], "s--", alpha=0.6,
            label="prior history only")
    ax.set(xlabel="mean predicted risk", ylabel="observed failure rate",
           title="Calibration (validation, 10 equal-count bins)")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_importances(importances: pd.DataFrame):
    import matplotlib.pyplot as plt
    frame = importances.iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(frame) + 1))
    ax.barh(frame["feature"], frame["importance"], xerr=frame["std"], color="tab:blue")
    ax.set(xlabel="drop in ROC AUC when shuffled", title="Permutation importance (validation window)")
    fig.tight_layout()
    return fig


def summary_table(result: TrainResult) -> pd.DataFrame:
    """The headline metrics of the model and the baseline side by side."""
    keys = ["n", "base_rate", "mean_risk", "roc_auc", "average_precision", "precision_at_k",
            "recall_top_20pct", "brier", "log_loss", "calibration_error"]
    m, b = result.metrics["validation"], result.metrics["baseline_prior_history"]
    return pd.DataFrame({"model": [m[k] for k in keys], "prior history only": [b[k] for k in keys]}, index=keys)
