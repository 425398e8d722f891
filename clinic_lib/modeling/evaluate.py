"""Time-ordered evaluation of the risk model: rolling origins, the two populations, the choice.

**Rolling origin.** For each origin day O: fit on the finished appointments of the days before O
(the most recent ``MAX_TRAIN_ROWS``), then score the days O .. O + horizon - 1 exactly as the
evening chain would (every feature is computed as of the evening before its day, see
``features.py``). Each origin's scores come from a model that never saw those days.

**Two populations.** Reception meets two kinds of appointment: those *booked before the scoring
evening* (``same_day_booking == 0``), which the evening call list can hold, and same-day bookings,
which did not exist yet when the list was made. Every figure is given for both and for all.

**The choice** (``choose``): the candidate with the highest mean rolling-origin ROC AUC (all
appointments) ships, unless it loses to the four-feature baseline on that mean: then the baseline
ships.

**Calibration** (``choose_calibration``): Platt scaling is fitted on out-of-sample risks and kept
only when it lowers the log loss on the holdout, measured by cross-fitting over its weeks (each
week's risks mapped by a fit on the other weeks' risks), and costs at most
``MAX_CALIBRATION_AUC_COST`` of holdout ROC AUC.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score
from threadpoolctl import threadpool_limits

from clinic_lib.core.errors import CannotRun
from clinic_lib.modeling import features as F
from clinic_lib.modeling import models as M

MAX_TRAIN_ROWS = 200_000  # the most recent rows a fit learns from (keeps a 20x clinic in budget)
MIN_TRAIN_ROWS = 200  # finished appointments before an origin, at the least
MAX_CALIBRATION_AUC_COST = 0.005  # calibration may not cost the holdout more ROC AUC than this
CALIBRATION_BINS = 10
POPULATIONS = ("booked_before_evening", "same_day", "all")
# What a scored row keeps besides the models' risks: its features and how to group it.
KEEP = ["appointment_id", "local_date", "target", "same_day_booking", "age_band", "gender"]


class NotEnoughData(CannotRun):
    """Too little history to train or evaluate; nothing was written."""


# --- figures -------------------------------------------------------------------------------------

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


def roc_auc(y, p) -> float | None:
    y = np.asarray(y, int)
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else None


def figures(y, p, days, k: int) -> dict:
    """Every figure of one population: ranking, the evening list, calibration."""
    y, p = np.asarray(y, int), np.asarray(p, float)
    two = len(np.unique(y)) == 2
    q = np.clip(p, 1e-6, 1 - 1e-6)
    bins = calibration_bins(y, p)
    return {
        "n": int(len(y)),
        "positives": int(y.sum()),
        "base_rate": float(y.mean()) if len(y) else None,
        "mean_risk": float(p.mean()) if len(p) else None,
        "roc_auc": float(roc_auc_score(y, p)) if two else None,
        "average_precision": float(average_precision_score(y, p)) if two else None,
        "precision_at_k": precision_at_k_per_day(y, p, days, k),
        "k": int(k),
        "recall_top_20pct": recall_top_fraction(y, p, 0.2),
        "brier": float(brier_score_loss(y, p)) if len(y) else None,
        "log_loss": float(log_loss(y, q, labels=[0, 1])) if len(y) else None,
        "calibration_error": calibration_error(bins),
        "distinct_risks": int(len(np.unique(np.round(p, 4)))),
        "calibration_bins": bins,
    }


def population_masks(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    before = (frame["same_day_booking"].to_numpy() == 0)
    return {"booked_before_evening": before, "same_day": ~before, "all": np.ones(len(frame), bool)}


def population_figures(frame: pd.DataFrame, p, k: int) -> dict:
    """``figures`` for appointments booked before the evening, same-day bookings, and all."""
    p = np.asarray(p, float)
    y, days = frame["target"].to_numpy(), frame["local_date"].to_numpy()
    return {name: figures(y[m], p[m], days[m], k) for name, m in population_masks(frame).items()}


def group_figures(y, p, groups) -> dict:
    """The main figures per group (age band, gender)."""
    frame = pd.DataFrame({"y": np.asarray(y, int), "p": np.asarray(p, float), "g": np.asarray(groups)})
    out = {}
    for g, part in frame.groupby("g", sort=True):
        out[str(g)] = {"n": int(len(part)), "base_rate": float(part["y"].mean()),
                       "mean_risk": float(part["p"].mean()), "roc_auc": roc_auc(part["y"], part["p"]),
                       "brier": float(brier_score_loss(part["y"], part["p"]))}
    return out


# --- rolling origin --------------------------------------------------------------------------------

def rows_before(table: pd.DataFrame, day: str, max_rows: int | None = MAX_TRAIN_ROWS) -> pd.DataFrame:
    """The finished appointments of the days before ``day`` (``table`` sorted by day), the most
    recent ``max_rows`` of them."""
    end = int(np.searchsorted(table["local_date"].to_numpy(), day, side="left"))
    start = max(0, end - max_rows) if max_rows else 0
    return table.iloc[start:end]


def holdout_origins(as_of: dt.date, valid_days: int, step_days: int) -> list[str]:
    """Origins every ``step_days`` from the first day of the last ``valid_days`` days up to as_of."""
    first = as_of - dt.timedelta(days=valid_days - 1)
    return [(first + dt.timedelta(days=d)).isoformat() for d in range(0, valid_days, step_days)]


@dataclass
class RollingOrigin:
    """The scored rows of every origin, with one column of raw (uncalibrated) risk per model."""
    origins: list[dict]
    scored: pd.DataFrame
    models: list[str]
    last_fits: dict = field(default_factory=dict)  # the last origin's fitted estimators

    def per_origin(self, population: str = "all") -> pd.DataFrame:
        """One row per origin: its days, rows, and the ROC AUC of every model on ``population``."""
        rows = []
        for o in self.origins:
            part = self.scored[self.scored["origin"] == o["origin"]]
            mask = population_masks(part)[population]
            row = {"origin": o["origin"], "days": f"{o['first_day']}..{o['last_day']}", "n": int(mask.sum()),
                   "base_rate": float(part["target"].to_numpy()[mask].mean()) if mask.any() else None}
            for m in self.models:
                row[m] = roc_auc(part["target"].to_numpy()[mask], part[m].to_numpy()[mask])
            rows.append(row)
        return pd.DataFrame(rows)

    def mean_figures(self, model: str, population: str, k: int) -> dict[str, float | None]:
        """Mean over origins of ROC AUC, average precision and precision@k of one model."""
        keys = ("roc_auc", "average_precision", "precision_at_k")
        per = []
        for o in self.origins:
            part = self.scored[self.scored["origin"] == o["origin"]]
            mask = population_masks(part)[population]
            if mask.any():
                f = figures(part["target"].to_numpy()[mask], part[model].to_numpy()[mask],
                            part["local_date"].to_numpy()[mask], k)
                per.append({key: f[key] for key in keys})
        out = {}
        for key in keys:
            values = [p[key] for p in per if p[key] is not None]
            out[key] = float(np.mean(values)) if values else None
        return out

    def mean_auc(self, population: str = "all") -> dict[str, float | None]:
        """Mean over origins of each model's ROC AUC (origins with a single outcome left out)."""
        table = self.per_origin(population)
        out = {}
        for m in self.models:
            values = pd.to_numeric(table[m], errors="coerce").dropna()
            out[m] = float(values.mean()) if len(values) else None
        return out


def rolling_origin(table: pd.DataFrame, origins: list[str], horizon_days: int, kinds,
                   last_day: str | None = None, max_train_rows: int | None = MAX_TRAIN_ROWS,
                   hgb_settings: dict | None = None) -> RollingOrigin:
    """Fit every model in ``kinds`` at each origin and score the origin's days (see the module doc).

    ``table``: finished appointments (features, ``target``, ``local_date``), sorted by day.
    ``blend`` reuses its members' fits. Origins whose days hold no finished appointment are left
    out; an origin with too little to learn from raises ``NotEnoughData``.
    """
    kinds = list(dict.fromkeys(kinds))
    fitted = [k for k in kinds if k != "blend"]
    if "blend" in kinds:
        fitted = list(dict.fromkeys(fitted + list(M.BLEND_MEMBERS)))
    shown = fitted + (["blend"] if "blend" in kinds else [])
    days = table["local_date"].to_numpy()
    parts, info, last_fits = [], [], {}
    with threadpool_limits(limits=M.TRAIN_THREADS, user_api="openmp"):
        for origin in origins:
            end = (dt.date.fromisoformat(origin) + dt.timedelta(days=horizon_days - 1)).isoformat()
            if last_day is not None:
                end = min(end, last_day)
            scored = table[(days >= origin) & (days <= end)]
            if scored.empty:
                continue
            train = rows_before(table, origin, max_train_rows)
            if len(train) < MIN_TRAIN_ROWS or train["target"].nunique() < 2:
                raise NotEnoughData(
                    f"too little history before {origin} to evaluate on: {len(train)} finished appointments "
                    f"({int(train['target'].sum())} failed) before it, need at least {MIN_TRAIN_ROWS} with "
                    "both outcomes (lower --valid-days, or wait for more history); no model was written")
            X, y = train[F.FEATURES], train["target"].to_numpy()
            part = scored[KEEP + [c for c in F.FEATURES if c not in KEEP]].copy()
            part["origin"] = origin
            fits = {}
            for kind in fitted:
                fits[kind] = M.fit_kind(kind, X, y, hgb_settings=hgb_settings)
                part[kind] = fits[kind].predict_proba(scored[F.FEATURES])[:, 1]
            if "blend" in kinds:
                part["blend"] = M.blend([part[m].to_numpy() for m in M.BLEND_MEMBERS])
                fits["blend"] = M.Blend([fits[m] for m in M.BLEND_MEMBERS])
            last_fits = fits
            parts.append(part)
            info.append({"origin": origin, "first_day": scored["local_date"].iloc[0],
                         "last_day": scored["local_date"].iloc[-1], "n": int(len(scored)),
                         "train_start": train["local_date"].iloc[0], "train_end": train["local_date"].iloc[-1],
                         "n_train": int(len(train))})
    scored = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=KEEP + [c for c in F.FEATURES if c not in KEEP] + ["origin"] + shown)
    return RollingOrigin(info, scored, shown, last_fits)


# --- choice and calibration -------------------------------------------------------------------------

def choose(ro: RollingOrigin, candidates) -> tuple[str, str]:
    """(the kind that ships, why): the best candidate by mean rolling-origin ROC AUC over all
    appointments, or the four-feature baseline when that candidate loses to it."""
    means = ro.mean_auc("all")
    scored = [c for c in candidates if means.get(c) is not None]
    if not scored:
        raise NotEnoughData("no holdout origin holds both outcomes: cannot compare the models; "
                            "no model was written")
    best = max(scored, key=lambda c: means[c])
    base = means.get("four_feature")
    if base is not None and means[best] < base:
        return "four_feature", (f"the best candidate, {best} (mean ROC AUC {means[best]:.4f}), loses to the "
                                f"four-feature baseline ({base:.4f}): the baseline ships")
    versus = f"the four-feature baseline's {base:.4f}" if base is not None else "no baseline figure"
    return best, f"{best} has the highest mean ROC AUC of the candidates ({means[best]:.4f}), vs {versus}"


def cross_fitted_platt(p, y, groups) -> np.ndarray | None:
    """Each group's risks mapped by a Platt fit on the other groups' (None if any fit fails)."""
    p, y, groups = np.asarray(p, float), np.asarray(y, int), np.asarray(groups)
    out = p.copy()
    uniq = pd.unique(groups)
    if len(uniq) < 2:
        return None
    for g in uniq:
        here = groups == g
        platt = M.Platt.fit(p[~here], y[~here])
        if platt is None:
            return None
        out[here] = platt(p[here])
    return out


def choose_calibration(p, y, groups) -> dict:
    """Platt scaling or none: Platt when it lowers the cross-fitted holdout log loss without costing
    more than ``MAX_CALIBRATION_AUC_COST`` of ROC AUC. ``risk``: the holdout risks of the choice
    (out of sample), clipped as the saved model clips them."""
    p, y = np.asarray(p, float), np.asarray(y, int)
    raw = M.clip_risk(p)
    crossed = cross_fitted_platt(p, y, groups)
    out = {"log_loss_raw": float(log_loss(y, raw, labels=[0, 1])), "roc_auc_raw": roc_auc(y, raw)}
    if crossed is not None:
        crossed = M.clip_risk(crossed)
        out.update(log_loss_calibrated=float(log_loss(y, crossed, labels=[0, 1])),
                   roc_auc_calibrated=roc_auc(y, crossed))
    use = (crossed is not None and out["log_loss_calibrated"] < out["log_loss_raw"]
           and (out["roc_auc_raw"] or 0) - (out["roc_auc_calibrated"] or 0) <= MAX_CALIBRATION_AUC_COST)
    out["method"] = "sigmoid" if use else "none"
    out["risk"] = crossed if use else raw
    return out
