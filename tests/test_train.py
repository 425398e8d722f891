"""Training: the time split, calibration, metrics, outputs, and refusing too little data."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from zoneinfo import ZoneInfo

import joblib
import numpy as np
import pandas as pd
import pytest
import sklearn
import sqlalchemy as sa
from sklearn.naive_bayes import GaussianNB

from clinic_lib import db, features as F, train as T
from clinic_lib.errors import UserError

TZ = ZoneInfo("Europe/Berlin")
END = dt.date(2026, 3, 20)
AS_OF = "2026-03-19"


@pytest.fixture
def clinic_db(clinic_env, db_url):
    """A migrated database (SQLite and Postgres) with ~120 days of synthetic appointments."""
    from clinic_lib.migrate import migrate
    engine = db.make_engine(db_url)
    migrate(engine)
    F.load_synthetic(engine, seed=11, patients=300, days=120, end=END, tz=TZ, booked_days=3)
    yield engine
    engine.dispose()


def test_time_split_never_mixes_days():
    frames = F.synthetic_frames(seed=3, patients=200, days=90, end=END, tz=TZ)
    a = F._normalise_appointments(frames["appointments"])
    table = F.feature_frame(a, F._normalise_patients(frames["patients"]), TZ, 24.0)
    table = table[table["eligible"] & (table["local_date"] <= AS_OF)]
    s = T.time_split(table, dt.date.fromisoformat(AS_OF), valid_days=14)
    assert s.train["local_date"].max() < s.calib["local_date"].min()
    assert s.calib["local_date"].max() < s.valid["local_date"].min()
    assert s.valid["local_date"].min() >= "2026-03-06" and s.valid["local_date"].max() <= AS_OF
    assert len(s.train) + len(s.calib) + len(s.valid) == len(table)
    # The calibration slice is ~20 % of the rows before the validation window, in whole days.
    pre = len(s.train) + len(s.calib)
    assert 0.2 * pre <= len(s.calib) < 0.2 * pre + table.groupby("local_date").size().max()
    # A row cap keeps the most recent training rows.
    capped = T.time_split(table, dt.date.fromisoformat(AS_OF), valid_days=14, max_train_rows=100)
    assert len(capped.train) == 100 and capped.train["local_date"].min() >= s.train["local_date"].min()
    assert capped.train["local_date"].max() == s.train["local_date"].max()


def test_calibration_recovers_known_probabilities():
    """A miscalibrated model (naive Bayes on correlated copies) becomes calibrated on a held-out slice."""
    rng = np.random.default_rng(0)
    n = 60000
    x = rng.normal(size=n)
    p_true = 1 / (1 + np.exp(-(1.5 * x - 1.5)))
    y = (rng.random(n) < p_true).astype(int)
    X = pd.DataFrame({"a": x, "b": x + rng.normal(0, 0.05, n), "c": x + rng.normal(0, 0.05, n)})
    tr, ca, te = slice(0, 20000), slice(20000, 40000), slice(40000, n)
    raw = GaussianNB().fit(X[tr], y[tr])
    raw_gap = T.calibration_error(T.calibration_bins(y[te], raw.predict_proba(X[te])[:, 1]))
    cal = T.calibrate(raw, X[ca], y[ca])
    p = cal.predict_proba(X[te])[:, 1]
    gap = T.calibration_error(T.calibration_bins(y[te], p))
    assert raw_gap > 0.05  # the model really was miscalibrated ...
    assert gap < 0.02      # ... and calibration fixed it
    assert np.mean(np.abs(p - p_true[te])) < 0.03
    # The frozen base model was not refitted.
    assert np.allclose(cal.calibrated_classifiers_[0].estimator.estimator.theta_, raw.theta_)


def test_metric_helpers_by_hand():
    y = [1, 0, 0, 1, 0, 1, 0, 0]
    p = [0.9, 0.8, 0.1, 0.2, 0.7, 0.6, 0.3, 0.05]
    days = ["d1", "d1", "d1", "d1", "d2", "d2", "d2", "d2"]
    # d1 top-2: 0.9 (1), 0.8 (0) -> 0.5; d2 top-2: 0.7 (0), 0.6 (1) -> 0.5
    assert T.precision_at_k_per_day(y, p, days, 2) == pytest.approx(0.5)
    # k larger than a day: all of that day's rows.
    assert T.precision_at_k_per_day(y, p, days, 10) == pytest.approx(3 / 8)
    # top 20 % of 8 rows = 2 rows: 0.9 (1), 0.8 (0) -> 1 of 3 failures.
    assert T.recall_top_fraction(y, p, 0.2) == pytest.approx(1 / 3)
    bins = T.calibration_bins([0, 1, 0, 1], [0.1, 0.2, 0.7, 0.8], bins=2)
    assert [b["n"] for b in bins] == [2, 2]
    assert T.calibration_error(bins) == pytest.approx((abs(0.15 - 0.5) + abs(0.75 - 0.5)) / 2)


def test_train_writes_model_metrics_and_run(clinic_db, clinic_env):
    r = T.train(as_of=AS_OF, valid_days=21, model="logreg", engine=clinic_db)
    assert r.kind == "logreg"
    meta = joblib.load(r.model_path)
    assert meta["features"] == F.FEATURES and meta["sklearn_version"] == sklearn.__version__
    assert meta["model_version"] == r.model_version and len(meta["data_fingerprint"]) == 16
    assert meta["windows"]["valid"]["start"] == "2026-02-27" and meta["windows"]["valid"]["end"] == AS_OF
    metrics = json.loads(Path(r.metrics_path).read_text())
    v = metrics["validation"]
    for key in ("roc_auc", "average_precision", "precision_at_k", "recall_top_20pct", "brier", "log_loss",
                "base_rate", "calibration_bins", "calibration_error"):
        assert v[key] is not None, key
    assert v["k"] == 10 and len(v["calibration_bins"]) == 10
    assert metrics["baseline_prior_history"]["roc_auc"] is not None
    assert set(metrics["by_gender"]) <= {"F", "M", "X", "unknown"}
    assert "unknown" in metrics["by_age_band"]
    # The planted effects are learnable: clearly better than chance.
    assert v["roc_auc"] > 0.65
    with clinic_db.connect() as conn:
        runs = conn.execute(sa.select(db.model_runs)).mappings().all()
    assert len(runs) == 1 and runs[0]["model_version"] == r.model_version
    assert runs[0]["n_valid"] == v["n"] and str(runs[0]["valid_end"]) == AS_OF
    # The valid window only holds days up to as_of; booked days after it are not rows.
    assert r.split.valid["local_date"].max() == AS_OF


def test_auto_compares_three_models_and_keeps_lowest_log_loss(clinic_db, clinic_env, db_url):
    if not db_url.startswith("sqlite"):
        pytest.skip("the model choice does not depend on the database; SQLite is enough")
    r = T.train(as_of=AS_OF, valid_days=21, model="auto", engine=clinic_db, write=False)
    assert set(r.comparison["model"]) == {"logreg", "rf", "hgb"}
    assert r.kind == r.comparison.sort_values("log_loss")["model"].iloc[0]
    assert r.model_path is None


def test_too_little_history_writes_nothing(clinic_env, engine):
    F.load_synthetic(engine, seed=1, patients=40, days=20, end=END, tz=TZ)
    with pytest.raises(T.NotEnoughData, match="need at least 500"):
        T.train(as_of=AS_OF, valid_days=7, engine=engine)
    assert not (clinic_env / "outputs" / "model" / "model.joblib").exists()
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(db.model_runs)).scalar() == 0


def test_no_failures_writes_nothing(clinic_env, engine):
    F.load_synthetic(engine, seed=2, patients=300, days=90, end=END, tz=TZ)
    with db.begin_write(engine) as conn:
        conn.execute(db.appointments.update().where(db.appointments.c.status != "booked")
                     .values(status="completed", canceled_at=None))
    with pytest.raises(T.NotEnoughData, match="no no-shows or late cancellations"):
        T.train(as_of=AS_OF, valid_days=14, engine=engine)
    assert not (clinic_env / "outputs" / "model").exists()


def test_bad_parameters(clinic_env, engine):
    with pytest.raises(UserError, match="unknown model 'svm'"):
        T.train(as_of=AS_OF, model="svm", engine=engine)
    with pytest.raises(UserError, match="expected a date"):
        T.train(as_of="19.03.2026", engine=engine)


def test_train_notebook_runs_with_papermill(clinic_env, db_url, tmp_path):
    if not db_url.startswith("sqlite"):
        pytest.skip("one notebook run is enough")
    import papermill as pm
    from clinic_lib import db as _db
    from clinic_lib.config import PROJECT_ROOT
    from clinic_lib.migrate import migrate
    engine = _db.make_engine(db_url)
    migrate(engine)
    F.load_synthetic(engine, seed=11, patients=300, days=120, end=END, tz=TZ)
    nb = PROJECT_ROOT / "notebooks" / "train.ipynb"
    out = tmp_path / "train_out.ipynb"
    pm.execute_notebook(str(nb), str(out), parameters={"as_of": AS_OF, "valid_days": 21, "model": "logreg"},
                        kernel_name="python3", cwd=str(nb.parent), progress_bar=False)
    assert (clinic_env / "outputs" / "model" / "model.joblib").exists()
    text = out.read_text()
    assert "image/png" in text  # the ROC/PR, calibration and importance figures were drawn
    # A second run with only_if_stale skips the fresh model.
    pm.execute_notebook(str(nb), str(out), parameters={"as_of": AS_OF, "only_if_stale": True},
                        kernel_name="python3", cwd=str(nb.parent), progress_bar=False)
    assert "nothing to train" in out.read_text()
