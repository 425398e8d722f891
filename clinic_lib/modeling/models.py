"""The risk model's candidates, its two baselines, and the calibration that keeps the ranking.

Candidates (on every feature of ``features.FEATURES``):

- ``logreg``: standardised numeric features and one-hot categoricals, L2-regularised logistic
  regression;
- ``hgb``: histogram gradient boosting, small trees (15 leaves of at least 200 rows, L2 5.0,
  100 rounds at learning rate 0.1): settings chosen on the rolling-origin evaluation of the public
  no-show file and the demo clinic (``bench/bench_model.py --settings``);
- ``blend``: the mean of those two on the logit scale.

Baselines, reported beside the model every time:

- ``lead_time``: logistic regression on log(1 + lead days) alone;
- ``four_feature``: scikit-learn's HistGradientBoosting with its default settings on lead days,
  age, weekday and the patient's no-shows before the day. When every candidate loses to it, it is
  what ships (``evaluate.choose``).

Calibration: ``Platt`` maps a raw risk p to sigmoid(a * logit(p) + b) with a > 0, an increasing
function, so two appointments in a given order stay in that order and no two distinct risks
become equal. Every risk the model gives is kept inside [RISK_FLOOR, 1 - RISK_FLOOR].
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from clinic_lib.core.errors import UserError
from clinic_lib.modeling import features as F

MODEL_FORMAT = 2  # the layout of model.joblib: a RiskModel; predict refuses files of another format
CANDIDATES = ("logreg", "hgb", "blend")
BASELINES = ("lead_time", "four_feature")
BLEND_MEMBERS = ("logreg", "hgb")
FOUR_FEATURES = ["lead_days", "age_years", "weekday", "prior_no_show"]
# Histogram gradient boosting bins a categorical feature into at most 255 values: physios beyond
# the most frequent ones share one category.
MAX_CATEGORIES = 200
HGB_SETTINGS = {"learning_rate": 0.1, "max_iter": 100, "max_leaf_nodes": 15, "min_samples_leaf": 200,
                "l2_regularization": 5.0}
RISK_FLOOR = 0.001  # no appointment is certain to happen or to fail
# OpenMP threads for the gradient boosting. On a small shared machine, spinning OpenMP workers make
# HistGradientBoosting many times slower than one thread; raise CLINIC_TRAIN_THREADS on a dedicated box.
TRAIN_THREADS = int(os.environ.get("CLINIC_TRAIN_THREADS") or 1)


def _ordinal() -> OrdinalEncoder:
    return OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan,
                          max_categories=MAX_CATEGORIES)


def make_estimator(kind: str, seed: int = 0, hgb_settings: dict | None = None):
    """An unfitted estimator of one candidate or baseline; it selects its own columns of FEATURES."""
    numeric, categorical = list(F.NUMERIC), list(F.CATEGORICAL)
    if kind == "logreg":
        pre = ColumnTransformer([("num", StandardScaler(), numeric),
                                 ("cat", OneHotEncoder(handle_unknown="ignore"), categorical)])
        return Pipeline([("pre", pre), ("clf", LogisticRegression(max_iter=2000, C=0.5))])
    if kind == "hgb":
        pre = ColumnTransformer([("num", "passthrough", numeric), ("cat", _ordinal(), categorical)])
        clf = HistGradientBoostingClassifier(
            **(hgb_settings or HGB_SETTINGS), categorical_features=[False] * len(numeric) + [True] * len(categorical),
            early_stopping=False, random_state=seed)
        return Pipeline([("pre", pre), ("clf", clf)])
    if kind == "lead_time":
        return Pipeline([("pre", ColumnTransformer([("num", StandardScaler(), ["lead_log"])])),
                         ("clf", LogisticRegression())])
    if kind == "four_feature":
        num = [c for c in FOUR_FEATURES if c != "weekday"]
        pre = ColumnTransformer([("num", "passthrough", num), ("cat", _ordinal(), ["weekday"])])
        clf = HistGradientBoostingClassifier(categorical_features=[False] * len(num) + [True], random_state=seed)
        return Pipeline([("pre", pre), ("clf", clf)])
    raise UserError(f"unknown model {kind!r}: expected auto, {', '.join(CANDIDATES)}")


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, float), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def sigmoid(z) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, float)))


def blend(risks) -> np.ndarray:
    """The mean of several models' risks on the logit scale."""
    return sigmoid(np.mean([logit(p) for p in risks], axis=0))


class Blend:
    """Fitted members whose risks are averaged on the logit scale (``blend``)."""

    def __init__(self, members: list):
        self.members = members

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        p = blend([m.predict_proba(X)[:, 1] for m in self.members])
        return np.column_stack([1 - p, p])


@dataclass
class Platt:
    """sigmoid(a * logit(p) + b), fitted by maximum likelihood; a > 0 keeps the ranking."""
    a: float
    b: float

    @classmethod
    def fit(cls, p, y) -> "Platt | None":
        """The map fitted on (risk, outcome) pairs; None when it would not be increasing."""
        y = np.asarray(y, int)
        if len(np.unique(y)) < 2:
            return None
        lr = LogisticRegression(C=1e6, max_iter=1000).fit(logit(p).reshape(-1, 1), y)
        a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
        return cls(a, b) if a > 0 else None

    def __call__(self, p) -> np.ndarray:
        return sigmoid(self.a * logit(p) + self.b)


def clip_risk(p) -> np.ndarray:
    return np.clip(np.asarray(p, float), RISK_FLOOR, 1 - RISK_FLOOR)


@dataclass
class RiskModel:
    """What is saved and scores: an estimator of one kind, its calibration (or None), the features."""
    kind: str
    estimator: object
    calibration: Platt | None

    def raw_risk(self, X: pd.DataFrame) -> np.ndarray:
        return self.estimator.predict_proba(X)[:, 1]

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        p = self.raw_risk(X)
        p = clip_risk(self.calibration(p) if self.calibration is not None else p)
        return np.column_stack([1 - p, p])


def fit_kind(kind: str, X: pd.DataFrame, y, seed: int = 0, hgb_settings: dict | None = None):
    """A fitted estimator of ``kind`` (a ``Blend`` of fitted members for ``blend``)."""
    if kind == "blend":
        return Blend([make_estimator(m, seed, hgb_settings).fit(X, y) for m in BLEND_MEMBERS])
    return make_estimator(kind, seed, hgb_settings).fit(X, y)
