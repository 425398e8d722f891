"""Training: rolling-origin evaluation, the choice against the baselines, the refit on every day up
to as_of, calibration that keeps the ranking, outputs, and refusing bad input."""
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

from clinic_lib.cli import main as cli_main
from clinic_lib.core import db
from clinic_lib.core.errors import UserError
from clinic_lib.ingest.refresh import bulk_insert
from clinic_lib.modeling import evaluate as E
from clinic_lib.modeling import features as F
from clinic_lib.modeling import models as M
from clinic_lib.modeling import train as T

from synthetic import load_synthetic, synthetic_frames

TZ = ZoneInfo("Europe/Berlin")
END = dt.date(2026, 3, 20)
AS_OF = "2026-03-19"


@pytest.fixture
def clinic_db(clinic_env, db_url):
    """A migrated database (SQLite and Postgres) with ~120 days of synthetic appointments."""
    from clinic_lib.core.migrate import migrate
    engine = db.make_engine(db_url)
    migrate(engine)
    load_synthetic(engine, seed=11, patients=300, days=120, end=END, tz=TZ, booked_days=3)
    yield engine
    engine.dispose()


def _table(seed=3, patients=200, days=90):
    frames = synthetic_frames(seed=seed, patients=patients, days=days, end=END, tz=TZ)
    a = F._normalise_appointments(frames["appointments"])
    table = F.feature_frame(a, F._normalise_patients(frames["patients"]), TZ, 24.0)
    table = table[table["eligible"] & (table["local_date"] <= AS_OF)]
    return table.sort_values(["local_date", "appointment_id"]).reset_index(drop=True)


def _count(engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(db.metadata.tables[table])).scalar()


# --- evaluation pieces, by hand ----------------------------------------------------------------------

def test_holdout_origins_and_rows_before():
    assert E.holdout_origins(dt.date(2026, 3, 19), 21, 7) == ["2026-02-27", "2026-03-06", "2026-03-13"]
    assert E.holdout_origins(dt.date(2026, 3, 19), 10, 7) == ["2026-03-10", "2026-03-17"]
    assert E.holdout_origins(dt.date(2026, 3, 19), 1, 7) == ["2026-03-19"]
    t = pd.DataFrame({"local_date": ["2026-03-01"] * 3 + ["2026-03-02"] * 2 + ["2026-03-04"], "x": range(6)})
    assert E.rows_before(t, "2026-03-02", None)["x"].tolist() == [0, 1, 2]
    assert E.rows_before(t, "2026-03-03", None)["x"].tolist() == [0, 1, 2, 3, 4]
    assert E.rows_before(t, "2026-03-03", 2)["x"].tolist() == [3, 4]  # the most recent rows
    assert E.rows_before(t, "2026-03-01", None).empty


def test_rolling_origin_fits_only_on_earlier_days():
    table = _table()
    origins = ["2026-02-20", "2026-03-01", "2026-03-10"]
    ro = E.rolling_origin(table, origins, 7, ["logreg", "lead_time", "four_feature"], last_day=AS_OF)
    assert [o["origin"] for o in ro.origins] == origins
    for o in ro.origins:
        end = (dt.date.fromisoformat(o["origin"]) + dt.timedelta(days=6)).isoformat()
        assert o["train_end"] < o["origin"] <= o["first_day"] <= o["last_day"] <= end
        assert o["n_train"] == int((table["local_date"] < o["origin"]).sum())
        scored = ro.scored[ro.scored["origin"] == o["origin"]]
        assert scored["local_date"].between(o["origin"], end).all() and len(scored) == o["n"]
    assert ro.models == ["logreg", "lead_time", "four_feature"]
    assert ro.scored[ro.models].apply(lambda c: c.between(0, 1).all()).all()
    # The mean is the mean of the per-origin ROC AUCs, each computed on that origin's rows only.
    per = ro.per_origin("all")
    for m in ro.models:
        first = ro.scored[ro.scored["origin"] == origins[0]]
        assert per.loc[0, m] == pytest.approx(E.roc_auc(first["target"], first[m]))
        assert ro.mean_auc("all")[m] == pytest.approx(per[m].mean())
    # Too little to learn from before an origin: a clear error naming it.
    with pytest.raises(E.NotEnoughData, match="before 2025-12-22 .* need at least 200"):
        E.rolling_origin(table, ["2025-12-22"], 7, ["logreg"])


def _hand_rolling(candidate, baseline):
    """Two origins of four rows each with the given risks; the ROC AUCs are worked out below."""
    scored = pd.DataFrame({
        "origin": ["a"] * 4 + ["b"] * 4, "local_date": ["d1"] * 4 + ["d2"] * 4,
        "target": [0, 1, 0, 1] * 2, "same_day_booking": [0, 0, 1, 0] * 2,
        "hgb": candidate, "four_feature": baseline, "lead_time": [0.5] * 8})
    origins = [{"origin": o, "first_day": d, "last_day": d} for o, d in (("a", "d1"), ("b", "d2"))]
    return E.RollingOrigin(origins, scored, ["hgb", "lead_time", "four_feature"])


def test_the_baseline_ships_when_the_candidate_loses_to_it():
    # origin a: candidate ranks both failures first (AUC 1); the baseline ranks 1 of 4 pairs right (0.25).
    ro = _hand_rolling([0.1, 0.9, 0.2, 0.8, 0.3, 0.6, 0.6, 0.3],
                       [0.9, 0.1, 0.2, 0.8, 0.1, 0.9, 0.2, 0.8])
    # b, candidate: negatives 0.3, 0.6; positives 0.6, 0.3 -> pairs: (0.6 vs 0.3) 1, (0.6 vs 0.6) 0.5,
    # (0.3 vs 0.3) 0.5, (0.3 vs 0.6) 0 -> 2 / 4 = 0.5.
    assert ro.mean_auc("all") == pytest.approx({"hgb": 0.75, "lead_time": 0.5, "four_feature": 0.625})
    assert E.choose(ro, ["hgb"])[0] == "hgb"
    ro = _hand_rolling([0.1, 0.9, 0.2, 0.8, 0.3, 0.6, 0.6, 0.3],
                       [0.1, 0.9, 0.2, 0.8, 0.1, 0.9, 0.2, 0.8])
    kind, reason = E.choose(ro, ["hgb"])
    assert kind == "four_feature" and "loses to the four-feature baseline (1.0000)" in reason
    # Booked before the evening: rows 0, 1, 3 of each origin.
    assert ro.per_origin("booked_before_evening")["n"].tolist() == [3, 3]


def test_metric_helpers_by_hand():
    y = [1, 0, 0, 1, 0, 1, 0, 0]
    p = [0.9, 0.8, 0.1, 0.2, 0.7, 0.6, 0.3, 0.05]
    days = ["d1", "d1", "d1", "d1", "d2", "d2", "d2", "d2"]
    # d1 top-2: 0.9 (1), 0.8 (0) -> 0.5; d2 top-2: 0.7 (0), 0.6 (1) -> 0.5
    assert E.precision_at_k_per_day(y, p, days, 2) == pytest.approx(0.5)
    assert E.precision_at_k_per_day(y, p, days, 10) == pytest.approx(3 / 8)
    # top 20 % of 8 rows = 2 rows: 0.9 (1), 0.8 (0) -> 1 of 3 failures.
    assert E.recall_top_fraction(y, p, 0.2) == pytest.approx(1 / 3)
    bins = E.calibration_bins([0, 1, 0, 1], [0.1, 0.2, 0.7, 0.8], bins=2)
    assert [b["n"] for b in bins] == [2, 2]
    assert E.calibration_error(bins) == pytest.approx((abs(0.15 - 0.5) + abs(0.75 - 0.5)) / 2)
    frame = pd.DataFrame({"target": y, "local_date": days, "same_day_booking": [0, 0, 0, 1, 1, 0, 0, 0]})
    f = E.population_figures(frame, p, 2)
    assert (f["booked_before_evening"]["n"], f["same_day"]["n"], f["all"]["n"]) == (6, 2, 8)
    # booked before: y 1,0,0,1,0,0 / p .9,.8,.1,.6,.3,.05 -> failures .9 and .6 over 4 successes: 7 of 8 pairs
    assert f["booked_before_evening"]["roc_auc"] == pytest.approx(7 / 8)
    assert f["same_day"]["roc_auc"] == 0.0  # its one failure (0.2) ranks below its one success (0.7)
    assert f["booked_before_evening"]["distinct_risks"] == 6


# --- calibration -----------------------------------------------------------------------------------

def test_platt_recovers_known_probabilities_and_keeps_every_tie_and_order():
    """A miscalibrated model (naive Bayes on correlated copies) becomes calibrated, and the map is
    increasing: distinct risks stay distinct, their order stays."""
    rng = np.random.default_rng(0)
    n = 60000
    x = rng.normal(size=n)
    p_true = 1 / (1 + np.exp(-(1.5 * x - 1.5)))
    y = (rng.random(n) < p_true).astype(int)
    X = pd.DataFrame({"a": x, "b": x + rng.normal(0, 0.05, n), "c": x + rng.normal(0, 0.05, n)})
    tr, ca, te = slice(0, 20000), slice(20000, 40000), slice(40000, n)
    raw = GaussianNB().fit(X[tr], y[tr])
    raw_te = raw.predict_proba(X[te])[:, 1]
    raw_gap = E.calibration_error(E.calibration_bins(y[te], raw_te))
    platt = M.Platt.fit(raw.predict_proba(X[ca])[:, 1], y[ca])
    p = platt(raw_te)
    assert raw_gap > 0.05  # the model really was miscalibrated ...
    assert E.calibration_error(E.calibration_bins(y[te], p)) < 0.02  # ... and the map fixed it
    assert np.mean(np.abs(p - p_true[te])) < 0.03
    order = np.argsort(raw_te, kind="stable")
    assert np.all(np.diff(p[order]) >= 0)
    assert len(np.unique(p)) == len(np.unique(raw_te))
    assert E.roc_auc(y[te], p) == pytest.approx(E.roc_auc(y[te], raw_te), abs=1e-12)


def test_risks_stay_strictly_inside_zero_and_one():
    class Sure:  # an estimator certain of some outcomes
        def predict_proba(self, X):
            p = np.array([0.0, 1e-9, 0.5, 1 - 1e-9, 1.0])
            return np.column_stack([1 - p, p])
    for calibration in (None, M.Platt(2.0, 0.3)):
        risk = M.RiskModel("hgb", Sure(), calibration).predict_proba(pd.DataFrame(index=range(5)))[:, 1]
        assert (risk > 0).all() and (risk < 1).all()
        assert risk.min() == M.RISK_FLOOR and risk.max() == 1 - M.RISK_FLOOR
    assert M.Platt.fit([0.1, 0.2], [1, 1]) is None  # one outcome: no map
    assert M.Platt.fit([0.1, 0.2, 0.3, 0.4], [1, 1, 0, 0]) is None  # decreasing: refused


def test_calibration_is_chosen_by_cross_fitted_log_loss():
    rng = np.random.default_rng(1)
    n = 4000
    z = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(z - 1.5)))).astype(int)
    weeks = np.repeat(["w1", "w2", "w3", "w4"], n // 4)
    good = 1 / (1 + np.exp(-(z - 1.5)))
    overconfident = 1 / (1 + np.exp(-3 * (z - 1.5)))
    c = E.choose_calibration(good, y, weeks)  # already calibrated: a map, if kept, changes next to nothing
    assert c["log_loss_raw"] - c["log_loss_calibrated"] < 0.002 and np.abs(c["risk"] - good).max() < 0.05
    c = E.choose_calibration(overconfident, y, weeks)
    assert c["method"] == "sigmoid" and c["log_loss_calibrated"] < c["log_loss_raw"] - 0.02
    assert np.abs(c["risk"] - good).mean() < 0.02
    assert c["roc_auc_raw"] - c["roc_auc_calibrated"] <= E.MAX_CALIBRATION_AUC_COST
    assert E.choose_calibration(overconfident, y, ["w1"] * n)["method"] == "none"  # one week: no cross-fit


# --- training on a database (SQLite and Postgres) ------------------------------------------------------

def test_train_writes_model_metrics_and_run(clinic_db, clinic_env):
    r = T.train(as_of=AS_OF, valid_days=21, model="logreg", engine=clinic_db)
    assert r.kind == "logreg"
    meta = joblib.load(r.model_path)
    assert meta["features"] == F.FEATURES and meta["sklearn_version"] == sklearn.__version__
    assert meta["model_format"] == M.MODEL_FORMAT and isinstance(meta["pipeline"], M.RiskModel)
    assert meta["model_version"] == r.model_version and len(meta["data_fingerprint"]) == 16
    metrics = json.loads(Path(r.metrics_path).read_text())
    h = metrics["holdout"]
    assert (h["start"], h["end"]) == ("2026-02-27", AS_OF)
    assert [o["origin"] for o in h["origins"]] == ["2026-02-27", "2026-03-06", "2026-03-13"]
    for population in ("booked_before_evening", "same_day", "all"):
        for key in ("n", "roc_auc", "average_precision", "precision_at_k", "brier", "log_loss", "base_rate",
                    "calibration_bins", "calibration_error", "distinct_risks"):
            assert h[population][key] is not None, (population, key)
        for name in M.BASELINES:
            assert metrics["baselines"][name][population]["roc_auc"] is not None
    assert h["booked_before_evening"]["n"] + h["same_day"]["n"] == h["all"]["n"] == len(r.holdout)
    assert h["all"]["k"] == 10 and len(h["all"]["calibration_bins"]) == 10
    assert set(h["by_gender"]) <= {"F", "M", "X", "unknown"} and "unknown" in h["by_age_band"]
    # The planted effects are learnable: clearly better than chance, and better than lead time alone.
    assert h["booked_before_evening"]["roc_auc"] > 0.65
    assert metrics["choice"]["mean_roc_auc"]["logreg"] > metrics["baselines"]["lead_time"]["mean_roc_auc"]
    with clinic_db.connect() as conn:
        runs = conn.execute(sa.select(db.model_runs)).mappings().all()
    assert len(runs) == 1 and runs[0]["model_version"] == r.model_version
    # model_runs: the deployed training range and the holdout (booked-before-the-evening figures).
    d = metrics["deployed"]
    assert str(runs[0]["train_end"]) == d["train_end"] == AS_OF and runs[0]["n_train"] == d["rows"]
    assert runs[0]["n_valid"] == h["all"]["n"] and str(runs[0]["valid_end"]) == AS_OF
    assert runs[0]["roc_auc"] == pytest.approx(h["booked_before_evening"]["roc_auc"])
    assert runs[0]["brier"] == pytest.approx(h["booked_before_evening"]["brier"])


def test_the_saved_model_learned_from_every_day_up_to_as_of(clinic_db, clinic_env):
    """The refit: the saved model's rows are every finished appointment up to as_of, and changing
    only the outcomes of as_of's own day changes what it predicts."""
    r = T.train(as_of=AS_OF, valid_days=21, model="logreg", engine=clinic_db)
    table = T.training_table(clinic_db, dt.date.fromisoformat(AS_OF))
    d = r.metrics["deployed"]
    assert (d["train_start"], d["train_end"], d["rows"]) == (table["local_date"].min(), AS_OF, len(table))
    assert d["positives"] == int(table["target"].sum())
    probe = table[F.FEATURES].iloc[:200]
    before = r.model.raw_risk(probe)
    with db.begin_write(clinic_db) as conn:  # every appointment of as_of that happened: now missed
        conn.execute(db.appointments.update().where(
            (sa.cast(db.appointments.c.local_date, sa.String) == AS_OF) & (db.appointments.c.status == "completed"))
            .values(status="no_show"))
    again = T.train(as_of=AS_OF, valid_days=21, model="logreg", engine=clinic_db, write=False)
    assert np.abs(again.model.raw_risk(probe) - before).max() > 1e-3
    # A smaller row cap keeps the most recent rows: the range still ends at as_of.
    capped = T.train(as_of=AS_OF, valid_days=21, model="logreg", engine=clinic_db, write=False, max_train_rows=1500)
    assert capped.metrics["deployed"]["rows"] == 1500 and capped.metrics["deployed"]["train_end"] == AS_OF


def test_calibration_keeps_the_ranking_on_the_holdout(clinic_db, clinic_env):
    r = T.train(as_of=AS_OF, valid_days=21, model="blend", engine=clinic_db, write=False)
    c, h = r.metrics["calibration"], r.metrics["holdout"]
    assert c["method"] in ("sigmoid", "none")
    assert c["roc_auc_raw"] - h["all"]["roc_auc"] <= E.MAX_CALIBRATION_AUC_COST
    risk = r.holdout["risk"].to_numpy()
    assert (risk > 0).all() and (risk < 1).all()
    # No collapse: the saved model gives the holdout rows as many distinct risks as its raw scores,
    # and same-day bookings are not all given one risk.
    table = T.training_table(clinic_db, dt.date.fromisoformat(AS_OF))
    X = table[table["local_date"] >= h["start"]][F.FEATURES]
    raw, saved = r.model.raw_risk(X), r.model.predict_proba(X)[:, 1]
    assert len(np.unique(saved)) == len(np.unique(raw)) > 0.5 * len(X)
    assert np.all(np.diff(saved[np.argsort(raw, kind="stable")]) >= 0)
    same_day = (X["same_day_booking"] == 1).to_numpy()
    assert same_day.sum() > 20 and len(np.unique(saved[same_day])) > 10


def test_outcomes_on_or_after_the_cutoff_change_no_feature_and_no_score(clinic_db, clinic_env):
    """Leakage, end to end: a model trained up to D-1 and the features of D's appointments read
    from the database do not change when every outcome from D on is randomised."""
    day = "2026-03-10"
    as_of = "2026-03-09"
    r = T.train(as_of=as_of, valid_days=14, model="blend", engine=clinic_db, write=False)

    def day_scores():
        with clinic_db.connect() as conn:
            a = F.read_appointments(conn)
            p = F.read_patients(conn)
        a = a.sort_values("appointment_id").reset_index(drop=True)
        X = F.build_features(a, a, p, TZ, 24.0)[(a["local_date"] == day).to_numpy()]
        return X.reset_index(drop=True), r.model.predict_proba(X)[:, 1]

    X0, s0 = day_scores()
    rng = np.random.default_rng(5)
    with clinic_db.connect() as conn:
        later = conn.execute(sa.select(db.appointments.c.appointment_id).where(
            sa.cast(db.appointments.c.local_date, sa.String) >= day)).scalars().all()
    statuses = rng.choice(["completed", "no_show", "canceled", "booked"], len(later))
    with db.begin_write(clinic_db) as conn:
        for status in ("completed", "no_show", "booked", "canceled"):
            ids = [int(i) for i, s in zip(later, statuses) if s == status]
            values = {"status": status, "canceled_at": db.appointments.c.appt_start if status == "canceled" else None}
            conn.execute(db.appointments.update().where(db.appointments.c.appointment_id.in_(ids)).values(**values))
    X1, s1 = day_scores()
    pd.testing.assert_frame_equal(X0, X1)
    assert np.array_equal(s0, s1)
    again = T.train(as_of=as_of, valid_days=14, model="blend", engine=clinic_db, write=False)
    assert again.metrics["holdout"]["all"] == r.metrics["holdout"]["all"]
    assert np.array_equal(again.model.predict_proba(X1)[:, 1], s1)


def _load_two_bump_clinic(engine):
    """Synthetic appointments whose failures depend on the lead time only, non-monotonically (leads
    of 1 and of 30 days fail, the others rarely): a four-feature gradient boosting finds that,
    logistic regression on the features cannot."""
    frames = synthetic_frames(seed=7, patients=300, days=120, end=END, tz=TZ, booked_days=3)
    a = frames["appointments"]
    lead = (pd.to_datetime(a["appt_start"]) - pd.to_datetime(a["booked_at"])).dt.total_seconds() / 86400
    rng = np.random.default_rng(0)
    bump = (lead.round().isin([1, 30])).to_numpy()
    fail = np.where(bump, rng.random(len(a)) < 0.7, rng.random(len(a)) < 0.05)
    past = (a["status"] != "booked").to_numpy()
    a.loc[past, "status"] = np.where(fail[past], "no_show", "completed")
    a.loc[past, "canceled_at"] = None
    with db.begin_write(engine) as conn:
        for table in ("physios", "patients", "appointments"):
            bulk_insert(conn, table, F.with_all_columns(table, frames[table]))


def test_the_four_feature_baseline_ships_when_it_is_better(clinic_env, engine):
    from clinic_lib.modeling.predict import score_day
    _load_two_bump_clinic(engine)
    r = T.train(as_of=AS_OF, valid_days=21, model="logreg", engine=engine)
    means = r.metrics["choice"]["mean_roc_auc"]
    assert means["four_feature"] > means["logreg"] + 0.05
    assert r.kind == "four_feature" and r.metrics["deployed"]["kind"] == "four_feature"
    assert "the baseline ships" in r.metrics["choice"]["reason"]
    assert joblib.load(r.model_path)["model_kind"] == "four_feature"
    scores = score_day("2026-03-20", engine=engine).scores  # the saved baseline scores a day
    assert len(scores) and scores["model_version"].str.startswith("four_feature-").all()


# --- bad input --------------------------------------------------------------------------------------

def test_too_little_history_writes_nothing(clinic_env, engine, capsys):
    load_synthetic(engine, seed=1, patients=40, days=20, end=END, tz=TZ)
    with pytest.raises(T.NotEnoughData, match="need at least 500"):
        T.train(as_of=AS_OF, valid_days=7, engine=engine)
    assert cli_main(["train", "--as-of", AS_OF, "--valid-days", "7"]) == 2
    assert "need at least 500" in capsys.readouterr().err
    assert not (clinic_env / "outputs" / "model" / "model.joblib").exists()
    assert _count(engine, "model_runs") == 0


def test_a_single_outcome_writes_nothing(clinic_env, engine):
    load_synthetic(engine, seed=2, patients=300, days=90, end=END, tz=TZ)
    with db.begin_write(engine) as conn:
        conn.execute(db.appointments.update().where(db.appointments.c.status != "booked")
                     .values(status="completed", canceled_at=None))
    with pytest.raises(T.NotEnoughData, match="no no-shows or late cancellations"):
        T.train(as_of=AS_OF, valid_days=14, engine=engine)
    with db.begin_write(engine) as conn:
        conn.execute(db.appointments.update().where(db.appointments.c.status != "booked").values(status="no_show"))
    with pytest.raises(T.NotEnoughData, match="no completed visit"):
        T.train(as_of=AS_OF, valid_days=14, engine=engine)
    assert not (clinic_env / "outputs" / "model").exists()


def test_as_of_outside_the_days_and_a_bad_holdout_leave_the_saved_model_alone(clinic_db, clinic_env, capsys):
    r = T.train(as_of=AS_OF, valid_days=21, model="logreg", engine=clinic_db)
    saved, metrics = r.model_path.read_bytes(), r.metrics_path.read_bytes()
    cases = [(["--as-of", "2025-01-01"], "as_of 2025-01-01 is before the first appointment in the database (2025-11-20)"),
             (["--as-of", "2026-04-30"], "as_of 2026-04-30 is after the last appointment in the database (2026-03-21)"),
             (["--as-of", AS_OF, "--valid-days", "115"], "too little history before 2025-11-25"),
             (["--as-of", "2025-11-21", "--valid-days", "1"], "need at least 500")]
    for args, message in cases:
        assert cli_main(["train", *args, "--model", "logreg"]) == 2, args
        assert message in capsys.readouterr().err
    assert r.model_path.read_bytes() == saved and r.metrics_path.read_bytes() == metrics
    assert _count(clinic_db, "model_runs") == 1
    assert sorted(p.name for p in r.model_path.parent.iterdir()) == ["metrics.json", "model.joblib"]


def test_bad_parameters(clinic_env, engine):
    with pytest.raises(UserError, match="unknown model 'svm'"):
        T.train(as_of=AS_OF, model="svm", engine=engine)
    with pytest.raises(UserError, match="expected a date"):
        T.train(as_of="19.03.2026", engine=engine)
    with pytest.raises(UserError, match="valid_days must be at least 1"):
        T.train(as_of=AS_OF, valid_days=0, engine=engine)


def test_train_notebook_runs_with_papermill(clinic_env, db_url, tmp_path):
    if not db_url.startswith("sqlite"):
        pytest.skip("one notebook run is enough")
    import papermill as pm

    from clinic_lib.core.config import PROJECT_ROOT
    from clinic_lib.core.migrate import migrate
    engine = db.make_engine(db_url)
    migrate(engine)
    load_synthetic(engine, seed=11, patients=300, days=120, end=END, tz=TZ)
    nb = PROJECT_ROOT / "notebooks" / "train.ipynb"
    out = tmp_path / "train_out.ipynb"
    pm.execute_notebook(str(nb), str(out), parameters={"as_of": AS_OF, "valid_days": 21, "model": "logreg"},
                        kernel_name="python3", cwd=str(nb.parent), progress_bar=False)
    assert (clinic_env / "outputs" / "model" / "model.joblib").exists()
    text = out.read_text()
    assert "image/png" in text  # the ROC/PR, calibration and importance figures were drawn
    assert "four_feature" in text and "lead_time" in text  # the baselines are shown beside the model
    # A second run with only_if_stale skips the fresh model.
    pm.execute_notebook(str(nb), str(out), parameters={"as_of": AS_OF, "only_if_stale": True},
                        kernel_name="python3", cwd=str(nb.parent), progress_bar=False)
    assert "nothing to train" in out.read_text()
