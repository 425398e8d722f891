"""The model in practice: per-day rows, their upkeep, the rolling figures and the retrain rule.

The clinic of reception_data.py with outcomes, scores and lists set by hand (k = CALL_CAPACITY = 2):

  Monday 2026-03-30 (S1), scored by model test-1, list 102, 104, 103, 101 (ranks 1-4):
    101 risk .10 completed | 102 .40 no-show | 103 .30 canceled 2 h before (late)
    104 .35 completed | 105 .05 canceled 28 h before (early: not an outcome row)
  Tuesday 2026-03-31 (S2), scored by test-1, no list:
    301 risk .20 completed | 302 .10 no-show | 303 .50 still booked (no outcome yet)
"""
from __future__ import annotations

import datetime as dt
import json

import joblib
import pytest

from clinic_lib.core import db
from clinic_lib.modeling import features as F
from clinic_lib.modeling import models as M
from clinic_lib.modeling.monitoring import (
    holdout_estimate,
    list_query,
    monitoring_table,
    recompute_monitoring,
    roc_auc,
    rolling_figures,
    scored_query,
    update_monitoring,
    weekly_figures,
)
from clinic_lib.modeling.retraining import retrain_decision, retrain_reason

from reception_data import _appt, load_clinic

S1, S2, S3 = dt.date(2026, 3, 30), dt.date(2026, 3, 31), dt.date(2026, 4, 1)


@pytest.fixture
def clinic(engine, clinic_env, monkeypatch):
    monkeypatch.setenv("CALL_CAPACITY", "2")
    load_clinic(engine)
    a = db.appointments
    with db.begin_write(engine) as conn:
        for aid, status, canceled_at in ((101, "completed", None), (102, "no_show", None),
                                         (103, "canceled", "2026-03-30T10:00:00+00:00"), (104, "completed", None),
                                         (301, "completed", None)):
            conn.execute(a.update().where(a.c.appointment_id == aid).values(status=status, canceled_at=canceled_at))
        conn.execute(a.insert(), [
            _appt(302, 2, 2, "2026-03-31T08:00:00+00:00", "2026-03-20T07:00:00+00:00", "no_show", local_date="2026-03-31"),
            _appt(303, 3, 2, "2026-03-31T10:00:00+00:00", "2026-03-20T07:00:00+00:00", local_date="2026-03-31")])
    score(engine, S1, {101: 0.10, 102: 0.40, 103: 0.30, 104: 0.35, 105: 0.05})
    score(engine, S2, {301: 0.20, 302: 0.10, 303: 0.50})
    listing(engine, S1, [102, 104, 103, 101])
    return engine


def score(engine, day, risks, version="test-1", at="2026-03-29T18:00:00+00:00"):
    """Replace the day's scores, as predict.score_day does."""
    with db.begin_write(engine) as conn:
        conn.execute(db.risk_scores.delete().where(db.risk_scores.c.day == day.isoformat()))
        if risks:
            conn.execute(db.risk_scores.insert(), [
                dict(day=day.isoformat(), appointment_id=aid, risk=r, risk_bucket="low", model_version=version,
                     scored_at=at) for aid, r in risks.items()])


def listing(engine, day, ids, at="2026-03-29T18:05:00+00:00", holdout=()):
    with db.begin_write(engine) as conn:
        conn.execute(db.priorities.delete().where(db.priorities.c.day == day.isoformat()))
        conn.execute(db.priorities.insert(), [
            dict(day=day.isoformat(), appointment_id=aid, rank=rank, patient_id=1, is_new_patient=0, missing_phone=0,
                 missing_consent=0, risk_score=0.2, risk_bucket="medium", risk_source="model", priority_score=0.2,
                 priority_reason="test", built_at=at, holdout=int(aid in holdout))
            for rank, aid in enumerate(ids, start=1)])


def table(engine):
    frame = monitoring_table("2026-01-01", "2026-12-31", engine)
    frame = frame.astype(object).where(frame.notna(), None)
    return {row["day"]: row for row in frame.to_dict("records")}


S1_ROW = {"day": "2026-03-30", "n_scored": 5, "n_outcome": 4, "n_failed": 2, "mean_risk": pytest.approx(0.2875),
          "observed_rate": 0.5,
          # failed .40, .30 vs attended .10, .35: .40 beats both, .30 beats .10 only -> 3 of 4 pairs
          "roc_auc": 0.75, "k": 2, "list_built": 1, "list_n": 2, "list_n_outcome": 2, "list_n_failed": 1,
          "precision_at_k": 0.5, "model_versions": "test-1", "scored_at": "2026-03-29T18:00:00+00:00",
          "built_at": "2026-03-29T18:05:00+00:00"}
S2_ROW = {"day": "2026-03-31", "n_scored": 3, "n_outcome": 2, "n_failed": 1, "mean_risk": pytest.approx(0.15),
          "observed_rate": 0.5, "roc_auc": 0.0, "k": 2, "list_built": 0, "list_n": 0, "list_n_outcome": 0,
          "list_n_failed": 0, "precision_at_k": None, "model_versions": "test-1",
          "scored_at": "2026-03-29T18:00:00+00:00", "built_at": None}


def without_computed_at(row):
    return {k: v for k, v in row.items() if k != "computed_at"}


def test_one_row_per_scored_day_hand_computed(clinic):
    result = update_monitoring(S2, clinic)
    assert result.recomputed == ["2026-03-30", "2026-03-31"] and result.deleted == []
    rows = table(clinic)
    assert set(rows) == {"2026-03-30", "2026-03-31"}  # 2026-04-01: no scores, no row
    assert without_computed_at(rows["2026-03-30"]) == S1_ROW
    assert without_computed_at(rows["2026-03-31"]) == S2_ROW


def test_idempotent_and_only_changed_days_recomputed(clinic, monkeypatch):
    update_monitoring(S2, clinic)
    everything = db.content_hash(clinic, tables=("model_monitoring",))
    again = update_monitoring(S2, clinic)
    assert again.recomputed == [] and again.deleted == []
    assert recompute_monitoring(S1, S3, clinic).recomputed == ["2026-03-30", "2026-03-31"]
    assert db.content_hash(clinic, tables=("model_monitoring",)) == everything

    # S1 scored again by another model: only S1 is recomputed
    score(clinic, S1, {101: 0.30, 102: 0.20, 103: 0.40, 104: 0.10, 105: 0.05}, version="test-2",
          at="2026-03-29T19:00:00+00:00")
    assert update_monitoring(S2, clinic).recomputed == ["2026-03-30"]
    row = table(clinic)["2026-03-30"]
    # failed .20, .40 vs attended .30, .10: .40 beats both, .20 beats .10 -> 3 of 4
    assert (row["model_versions"], row["roc_auc"], row["mean_risk"]) == ("test-2", 0.75, pytest.approx(0.25))
    # S1's list rebuilt: recomputed; scores for a day still to come (S3): no row yet
    listing(clinic, S1, [103, 101, 102, 104], at="2026-03-29T20:00:00+00:00")
    score(clinic, S3, {})
    assert update_monitoring(S2, clinic).recomputed == ["2026-03-30"]
    assert table(clinic)["2026-03-30"]["precision_at_k"] == 0.5  # 103 failed, 101 attended
    # another CALL_CAPACITY: every day in the window again
    monkeypatch.setenv("CALL_CAPACITY", "3")
    assert update_monitoring(S2, clinic).recomputed == ["2026-03-30", "2026-03-31"]
    assert (table(clinic)["2026-03-30"]["list_n"], table(clinic)["2026-03-30"]["list_n_failed"]) == (3, 2)
    # S2's scores gone: its row goes
    score(clinic, S2, {})
    result = update_monitoring(S2, clinic)
    assert result.deleted == ["2026-03-31"] and set(table(clinic)) == {"2026-03-30"}


def test_days_a_drop_rewrote_are_found_outside_the_window(clinic):
    """A catch-up applies several drops and updates once: a day the drops changed is recomputed
    even when it lies before the window of the day the update runs for."""
    update_monitoring(S2, clinic)
    a = db.appointments
    with db.begin_write(clinic) as conn:  # S1's drop, applied again with 101 a no-show
        conn.execute(a.update().where(a.c.appointment_id == 101).values(status="no_show", source_day=S1.isoformat()))
    later = S1 + dt.timedelta(days=60)
    assert update_monitoring(later, clinic).recomputed == []  # S1 is outside later's window
    result = update_monitoring(later, clinic, drop_days=[S1, later])
    assert result.recomputed == ["2026-03-30"]
    assert table(clinic)["2026-03-30"]["n_failed"] == 3


def test_a_late_drop_replaces_the_days_row(engine, clinic_env):
    """Through the real refresh: day D's drop, D's row; a corrected drop of D, D's row replaced."""
    from clinic_lib.ingest.refresh import refresh_day

    from drops import DAY, DAY_APPOINTMENTS, appt, write_day_drop
    data = clinic_env / "data"
    write_day_drop(data)  # 1 completed, 2 no-show, 3 canceled 17 h before (late), 4 booked for next week
    refresh_day(DAY, engine=engine)
    day = dt.date.fromisoformat(DAY)
    score(engine, day, {1: 0.1, 2: 0.5, 3: 0.3})
    assert update_monitoring(DAY, engine).recomputed == [DAY]
    assert (table(engine)[DAY]["n_failed"], table(engine)[DAY]["roc_auc"]) == (2, 1.0)
    write_day_drop(data, day="2026-02-11", appointments=[], payments=[])
    refresh_day("2026-02-11", engine=engine, allow_empty=True)
    assert update_monitoring("2026-02-11", engine).recomputed == []
    corrected = [appt(1, "2026-02-10T09:00:00+01:00", "2026-02-10T09:45:00+01:00", "no_show", first=1)]
    write_day_drop(data, appointments=corrected + DAY_APPOINTMENTS[1:], payments=[])
    refresh_day(DAY, engine=engine)
    assert update_monitoring(DAY, engine).recomputed == [DAY]
    row = table(engine)[DAY]
    assert (row["n_outcome"], row["n_failed"], row["roc_auc"]) == (3, 3, None)  # one class: no AUC
    assert len(table(engine)) == 1


def test_rolling_figures_pool_the_rows(clinic, tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(
        {"model_version": "test-1", "validation": {"roc_auc": 0.78, "base_rate": 0.16, "mean_risk": 0.17,
                                                   "precision_at_k": 0.4, "calibration_error": 0.02, "n": 900}}))
    holdout = holdout_estimate(path=tmp_path / "metrics.json")
    f = rolling_figures(S2, clinic, holdout=holdout)
    assert (f.start, f.end, f.days_scored, f.n_scored, f.n_outcome, f.n_failed) == (
        dt.date(2026, 3, 4), S2, 2, 8, 6, 3)
    assert f.observed_rate == 0.5 and f.mean_risk == pytest.approx(1.45 / 6)
    # pooled: failed .40 .30 .10 vs attended .10 .35 .20: 3 + 2 + 0.5 (the tie) of 9 pairs, not the
    # mean of the days' 0.75 and 0.0
    assert f.roc_auc == pytest.approx(5.5 / 9)
    bands = f.by_band.set_index("band")
    assert list(bands.index) == ["medium", "high"]  # nothing below .10
    assert bands.loc["medium", ["n", "failures"]].tolist() == [3, 1]
    assert bands.loc["medium", "mean_predicted"] == pytest.approx(0.4 / 3)
    assert bands.loc["high", ["n", "failures"]].tolist() == [3, 2]
    assert bands.loc["high", "gap"] == pytest.approx(2 / 3 - 0.35)
    assert f.calibration_gap == pytest.approx((3 * (1 / 3 - 0.4 / 3) + 3 * (2 / 3 - 0.35)) / 6)
    assert (f.list_n_outcome, f.precision_at_k) == (2, 0.5)
    assert f.auc_drop == pytest.approx(0.78 - 5.5 / 9)
    assert f.table().loc["ROC AUC"].tolist() == [pytest.approx(5.5 / 9), 0.78]
    # one model's scores only
    score(clinic, S2, {301: 0.20, 302: 0.10, 303: 0.50}, version="test-2")
    assert rolling_figures(S2, clinic, model_version="test-1", holdout={}).n_outcome == 4
    assert rolling_figures(S2, clinic, days=1, holdout={}).n_outcome == 2
    weeks = weekly_figures(S1 - dt.timedelta(days=7), S2, clinic)
    assert weeks[["week", "n_outcome", "n_failed"]].values.tolist() == [[S1, 6, 3]]
    assert weeks["model_versions"].iloc[0] == "test-1,test-2"


def test_roc_auc_hand_computed():
    assert roc_auc([1, 0, 1, 0], [0.9, 0.1, 0.4, 0.4]) == pytest.approx(3.5 / 4)
    assert roc_auc([1, 1], [0.2, 0.3]) is None and roc_auc([], []) is None


def test_holdout_estimate_layouts(tmp_path):
    path = tmp_path / "metrics.json"
    assert holdout_estimate(path=path) is None  # no file
    path.write_text("{not json")
    assert holdout_estimate(path=path) is None
    path.write_text(json.dumps({"model_version": "m1", "validation": {"roc_auc": 0.77, "n": 10}}))
    h = holdout_estimate(path=path)
    assert (h["roc_auc"], h["n"], h["base_rate"], h["model_version"], h["key"]) == (0.77, 10, None, "m1", "validation")
    # the layout train.py writes: the booked-before-the-evening population of the holdout
    path.write_text(json.dumps({"model_version": "m1", "validation": {"roc_auc": 0.77},
                                "holdout": {"start": "2026-03-01", "all": {"roc_auc": 0.80},
                                            "booked_before_evening": {"roc_auc": 0.74, "base_rate": 0.15}}}))
    assert (holdout_estimate(path=path)["roc_auc"], holdout_estimate(path=path)["key"]) == (
        0.74, "holdout.booked_before_evening")
    path.write_text(json.dumps({"validation": {"roc_auc": None}}))
    assert holdout_estimate(path=path) is None


RULE = dict(max_age_days=7, calibration_gap_threshold=0.05, auc_drop_threshold=0.05, min_scored=1000)


@pytest.mark.parametrize("inputs, kind", [
    (dict(model_age_days=None, n_outcome=0, calibration_gap=None, realised_auc=None, holdout_auc=None), "missing"),
    (dict(model_age_days=7.5, n_outcome=0, calibration_gap=None, realised_auc=None, holdout_auc=None), "age"),
    (dict(model_age_days=7.0, n_outcome=5000, calibration_gap=0.01, realised_auc=0.78, holdout_auc=0.78), None),
    # a quiet week cannot trigger it, however bad it looks
    (dict(model_age_days=2, n_outcome=999, calibration_gap=0.30, realised_auc=0.50, holdout_auc=0.78), None),
    (dict(model_age_days=2, n_outcome=1000, calibration_gap=0.051, realised_auc=0.78, holdout_auc=0.78), "calibration"),
    (dict(model_age_days=2, n_outcome=1000, calibration_gap=0.05, realised_auc=0.78, holdout_auc=0.78), None),
    (dict(model_age_days=2, n_outcome=1500, calibration_gap=0.02, realised_auc=0.70, holdout_auc=0.78), "auc"),
    (dict(model_age_days=2, n_outcome=1500, calibration_gap=0.02, realised_auc=0.74, holdout_auc=0.78), None),
    (dict(model_age_days=2, n_outcome=1500, calibration_gap=0.02, realised_auc=0.60, holdout_auc=None), None),
])
def test_retrain_rule_both_ways(inputs, kind):
    reason = retrain_reason(**inputs, **RULE)
    assert (reason.kind if reason else None) == kind


def test_retrain_reason_says_why():
    reason = retrain_reason(model_age_days=2, n_outcome=1500, calibration_gap=0.02, realised_auc=0.70,
                            holdout_auc=0.78, **RULE)
    assert str(reason) == ("over the last 4 weeks (1500 scored appointments with an outcome) the ROC AUC is "
                           "0.700, 0.080 below the holdout estimate 0.780 (RETRAIN_AUC_DROP = 0.05)")
    assert str(retrain_reason(model_age_days=9.25, n_outcome=0, calibration_gap=None, realised_auc=None,
                              holdout_auc=None, **RULE)) == "the model is 9.2 days old (MODEL_MAX_AGE_DAYS = 7)"


def test_retrain_decision_reads_the_saved_model(clinic, clinic_env, monkeypatch):
    """The gathering around the pure rule: the saved model's age, its own scores, its estimate."""
    import sklearn

    from clinic_lib.core.config import get_settings
    model_dir = get_settings().model_dir
    model_dir.mkdir(parents=True)
    trained = "2026-03-29T12:00:00+00:00"
    joblib.dump({"pipeline": None, "features": list(F.FEATURES), "feature_version": F.FEATURE_VERSION,
                 "sklearn_version": sklearn.__version__, "model_version": "test-1", "trained_at": trained,
                 "late_cancel_hours": 24.0, "clinic_tz": "Europe/Berlin", "model_format": M.MODEL_FORMAT},
                model_dir / "model.joblib")
    (model_dir / "metrics.json").write_text(json.dumps({"model_version": "test-1", "validation": {"roc_auc": 0.9}}))
    now = "2026-04-01T12:00:00+00:00"  # 3 days after training
    monkeypatch.setenv("RETRAIN_MIN_SCORED", "6")
    monkeypatch.setenv("RETRAIN_CALIBRATION_GAP", "0.3")  # the test clinic's gap is .258: not passed
    d = retrain_decision(S2, clinic, now=now)
    # 6 outcome rows, AUC 5.5/9 = .611 against .9: .289 below
    assert (d.model_version, d.model_age_days, d.figures.n_outcome) == ("test-1", 3.0, 6)
    assert d.retrain and d.reason.kind == "auc"
    monkeypatch.setenv("RETRAIN_AUC_DROP", "0.3")
    assert not retrain_decision(S2, clinic, now=now).retrain
    monkeypatch.setenv("RETRAIN_CALIBRATION_GAP", "0.25")
    assert retrain_decision(S2, clinic, now=now).reason.kind == "calibration"
    monkeypatch.setenv("RETRAIN_MIN_SCORED", "7")  # too few rows for a verdict on evidence
    assert not retrain_decision(S2, clinic, now=now).retrain
    assert retrain_decision(S2, clinic, now="2026-04-06T12:00:01+00:00").reason.kind == "age"
    # an estimate written for another model is not used
    (model_dir / "metrics.json").write_text(json.dumps({"model_version": "other", "validation": {"roc_auc": 0.9}}))
    monkeypatch.setenv("RETRAIN_MIN_SCORED", "6")
    monkeypatch.setenv("RETRAIN_CALIBRATION_GAP", "0.3")
    monkeypatch.setenv("RETRAIN_AUC_DROP", "0.05")
    assert not retrain_decision(S2, clinic, now=now).retrain
    (model_dir / "model.joblib").unlink()
    assert retrain_decision(S2, clinic, now=now).reason.kind == "missing"


def test_four_week_queries_use_indices(tmp_path):
    """What rolling_figures and update_monitoring read: index ranges of those days, no table scan."""
    from clinic_lib.core.migrate import migrate
    from clinic_lib.modeling.monitoring import _signature_queries
    engine = db.make_engine(f"sqlite:///{tmp_path / 'plan.db'}")
    migrate(engine)
    queries = {
        "scores of the window": (scored_query("2026-03-04", "2026-03-31", model_version="m1"),
                                 ["sqlite_autoindex_risk_scores_1", "INTEGER PRIMARY KEY"]),
        "lists of the window": (list_query("2026-03-04", "2026-03-31", k=10),
                                ["ix_priorities_day_rank", "INTEGER PRIMARY KEY"]),
        "days the drop wrote": (_signature_queries("2026-02-24", "2026-03-31", 10, ["2026-03-31"], "2026-03-31")[3],
                                ["ix_appointments_source_day"]),
    }
    for name, query in zip(("scored", "listed", "stored"), _signature_queries("2026-02-24", "2026-03-31", 10, [])[:3]):
        queries[name] = (query, [{"scored": "sqlite_autoindex_risk_scores_1", "listed": "ix_priorities_day_rank",
                                  "stored": "sqlite_autoindex_model_monitoring_1"}[name]])
    with engine.connect() as conn:
        for name, (query, indices) in queries.items():
            compiled = query.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
            params = tuple(compiled.params[k] for k in compiled.positiontup)
            plan = " ".join(r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + str(compiled), params))
            for index in indices:
                assert index in plan, (name, plan)
            assert "SCAN" not in plan, (name, plan)



def test_clinic_monitor_command(clinic, capsys):
    from clinic_lib.cli import main
    assert main(["monitor", "--day", "2026-03-31"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == ("model monitoring after 2026-03-31: 2 day(s) recomputed (2026-03-30, "
                                   "2026-03-31)")
    assert out.splitlines()[-1] == "retrain: there is no usable model"
    assert main(["monitor", "--day", "2026-03-31", "--recompute-from", "2026-03-01"]) == 0
    assert capsys.readouterr().out.startswith("model monitoring after 2026-03-31: 2 day(s) recomputed")


def test_a_day_after_the_latest_drop_waits_for_it(clinic):
    """S2's drop has not come (the latest drop is S1's): S2 gets no row until its drop is applied."""
    a = db.appointments
    with db.begin_write(clinic) as conn:
        conn.execute(a.update().where(a.c.local_date == S1.isoformat()).values(source_day=S1.isoformat()))
    assert update_monitoring(S2, clinic).recomputed == ["2026-03-30"]
    assert recompute_monitoring(S1, S3, clinic).recomputed == ["2026-03-30"]
    with db.begin_write(clinic) as conn:
        conn.execute(a.update().where(a.c.local_date == S2.isoformat()).values(source_day=S2.isoformat()))
    assert update_monitoring(S2, clinic).recomputed == ["2026-03-31"]
    assert set(table(clinic)) == {"2026-03-30", "2026-03-31"}
