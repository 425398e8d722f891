"""Whether the model should be retrained now, and why.

**Retraining on evidence** (``retrain_reason``, pure; ``retrain_decision`` gathers its inputs):
retrain when there is no usable model, when it is older than MODEL_MAX_AGE_DAYS, or, with at least
RETRAIN_MIN_SCORED outcome rows scored by the current model in the last 28 days, when the pooled
calibration gap exceeds RETRAIN_CALIBRATION_GAP or the pooled ROC AUC is more than RETRAIN_AUC_DROP
below the holdout estimate. Only the current model's scores count, so a retrain is not triggered
again by the weeks its predecessor scored.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from clinic_lib.core.config import Settings, get_settings
from clinic_lib.core.timeutil import parse_day
from clinic_lib.modeling.monitoring import ROLLING_DAYS, RollingFigures, holdout_estimate, rolling_figures


@dataclass(frozen=True)
class RetrainReason:
    kind: str  # 'missing', 'age', 'calibration', 'auc'; 'future' (a replayed evening, see retrain_decision)
    text: str

    def __str__(self) -> str:
        return self.text


def retrain_reason(*, model_age_days: float | None, n_outcome: int, calibration_gap: float | None,
                   realised_auc: float | None, holdout_auc: float | None, max_age_days: float,
                   calibration_gap_threshold: float, auc_drop_threshold: float,
                   min_scored: int, window_days: int = ROLLING_DAYS) -> RetrainReason | None:
    """Why the model should be retrained now, or None (pure: every input is an argument).

    - no usable model (``model_age_days`` None): 'missing';
    - older than ``max_age_days``: 'age';
    - with at least ``min_scored`` outcome rows scored by this model in the window: a calibration
      gap above ``calibration_gap_threshold`` ('calibration'), or a ROC AUC more than
      ``auc_drop_threshold`` below the holdout estimate ('auc'). Fewer rows: no verdict on evidence.
    """
    if model_age_days is None:
        return RetrainReason("missing", "there is no usable model")
    if model_age_days > max_age_days:
        return RetrainReason("age", f"the model is {model_age_days:.1f} days old "
                                    f"(MODEL_MAX_AGE_DAYS = {max_age_days:g})")
    if n_outcome < min_scored:
        return None
    weeks = f"the last {window_days // 7} weeks" if window_days % 7 == 0 else f"the last {window_days} days"
    if calibration_gap is not None and calibration_gap > calibration_gap_threshold:
        return RetrainReason("calibration", f"over {weeks} ({n_outcome} scored appointments with an outcome) "
                                            f"the risks are off by {calibration_gap:.3f} on average "
                                            f"(RETRAIN_CALIBRATION_GAP = {calibration_gap_threshold:g})")
    if realised_auc is not None and holdout_auc is not None and holdout_auc - realised_auc > auc_drop_threshold:
        return RetrainReason("auc", f"over {weeks} ({n_outcome} scored appointments with an outcome) the ROC "
                                    f"AUC is {realised_auc:.3f}, {holdout_auc - realised_auc:.3f} below the "
                                    f"holdout estimate {holdout_auc:.3f} (RETRAIN_AUC_DROP = {auc_drop_threshold:g})")
    return None


@dataclass
class RetrainDecision:
    reason: RetrainReason | None  # None: no retrain
    model_version: str | None
    model_age_days: float | None
    figures: RollingFigures | None  # the current model's last 4 weeks (None without a model)

    @property
    def retrain(self) -> bool:
        return self.reason is not None


def retrain_decision(day, engine: sa.Engine | None = None, settings: Settings | None = None,
                     now=None, model_file: Path | None = None,
                     age_in_clinic_days: bool = False) -> RetrainDecision:
    """Gather ``retrain_reason``'s inputs for the evening of ``day`` (its outcomes known): the saved
    model's age (wall clock ``now``, default the current time) and its rolling figures to ``day``
    against its holdout estimate (an estimate written for another model version is not used).

    ``age_in_clinic_days``: the age is ``day`` minus the model's ``as_of`` instead, the days of data
    it has not seen; a catch-up replaying past evenings counts age this way, since the wall clock
    then says nothing about those evenings."""
    from clinic_lib.core.errors import CannotRun
    from clinic_lib.modeling.predict import load_model, model_path
    settings = settings or get_settings()
    try:
        meta = load_model(model_file or model_path(settings))
    except CannotRun:
        meta = None
    if meta is None:
        return RetrainDecision(retrain_reason(model_age_days=None, n_outcome=0, calibration_gap=None,
                                              realised_auc=None, holdout_auc=None, max_age_days=0,
                                              calibration_gap_threshold=0, auc_drop_threshold=0, min_scored=0),
                               None, None, None)
    if age_in_clinic_days and meta.get("as_of"):
        age = float((parse_day(day) - parse_day(meta["as_of"])).days)
        if age < 0:  # a model that learned from later days would judge this evening with hindsight
            return RetrainDecision(RetrainReason("future", f"the saved model learned from days up to "
                                                           f"{meta['as_of']}, after {parse_day(day)}"),
                                   meta.get("model_version"), age, None)
    else:
        now = pd.Timestamp(now) if now is not None else pd.Timestamp.now(tz="UTC")
        age = (now - pd.Timestamp(meta["trained_at"])) / pd.Timedelta(days=1)
    version = meta.get("model_version")
    holdout = holdout_estimate(settings, (Path(model_file).parent / "metrics.json") if model_file else None)
    if holdout and holdout.get("model_version") not in (None, version):
        holdout = None
    figures = rolling_figures(day, engine, settings, model_version=version, holdout=holdout or {})
    reason = retrain_reason(
        model_age_days=float(age), n_outcome=figures.n_outcome, calibration_gap=figures.calibration_gap,
        realised_auc=figures.roc_auc, holdout_auc=(holdout or {}).get("roc_auc"),
        max_age_days=settings.model_max_age_days, calibration_gap_threshold=settings.retrain_calibration_gap,
        auc_drop_threshold=settings.retrain_auc_drop, min_scored=settings.retrain_min_scored)
    return RetrainDecision(reason, version, float(age), figures)
