"""Scoring a day: idempotent outputs, the same features as training, and refusing bad models."""
from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import joblib
import pandas as pd
import pytest
import sqlalchemy as sa

from clinic_lib.cli import main as cli_main
from clinic_lib.core import db
from clinic_lib.core.errors import CannotRun
from clinic_lib.modeling import features as F
from clinic_lib.modeling import predict as P
from clinic_lib.modeling import train as T

from synthetic import load_synthetic

TZ = ZoneInfo("Europe/Berlin")
END = dt.date(2026, 3, 20)  # days from END on hold booked appointments only
AS_OF = "2026-03-19"


@pytest.fixture
def trained(clinic_env, db_url):
    """A database with synthetic history + 3 booked days, and a logistic model trained on it."""
    from clinic_lib.core.migrate import migrate
    engine = db.make_engine(db_url)
    migrate(engine)
    load_synthetic(engine, seed=11, patients=300, days=120, end=END, tz=TZ, booked_days=3)
    result = T.train(as_of=AS_OF, valid_days=21, model="logreg", engine=engine)
    yield engine, result
    engine.dispose()


def _table(engine, day):
    with engine.connect() as conn:
        rows = conn.execute(sa.select(db.risk_scores.c.appointment_id, db.risk_scores.c.risk,
                                      db.risk_scores.c.risk_bucket, db.risk_scores.c.model_version)
                            .where(sa.cast(db.risk_scores.c.day, sa.String) == day)
                            .order_by(db.risk_scores.c.appointment_id)).all()
    return [tuple(r) for r in rows]


def test_scoring_is_idempotent(trained, clinic_env):
    engine, result = trained
    r1 = P.score_day("2026-03-20", engine=engine)
    first_csv, first_table = r1.day_csv.read_bytes(), _table(engine, "2026-03-20")
    assert len(r1.scores) == 30 and len(first_table) == 30  # 300 patients // 10 per day
    assert set(r1.scores["model_version"]) == {result.model_version}
    P.score_day("2026-03-21", engine=engine)
    r2 = P.score_day("2026-03-20", engine=engine)
    assert r2.day_csv.read_bytes() == first_csv
    assert _table(engine, "2026-03-20") == first_table
    combined = pd.read_csv(r2.combined_csv)
    assert combined.groupby("day").size().to_dict() == {"2026-03-20": 30, "2026-03-21": 30}
    assert not combined.duplicated(["day", "appointment_id"]).any()
    # Combined rows of a day are the day file's rows.
    day_rows = pd.read_csv(r2.day_csv)
    pd.testing.assert_frame_equal(combined[combined["day"] == "2026-03-20"].reset_index(drop=True), day_rows)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(db.risk_scores)).scalar() == 60


def test_scores_use_the_training_features(trained):
    """The indexed per-day path computes exactly what training computes for those rows."""
    engine, result = trained
    settings = __import__("clinic_lib.core.config", fromlist=["get_settings"]).get_settings()
    day = dt.date(2026, 3, 21)
    with engine.connect() as conn:
        first = conn.execute(sa.select(db.appointments).where(db.appointments.c.local_date == day.isoformat())
                             .order_by(db.appointments.c.appointment_id)).mappings().first()
    # A same-day sibling of that patient, booked a week before and canceled the day before (early):
    # it is not scored (not booked) but counts in the patient's same-day count, as in training.
    with db.begin_write(engine) as conn:
        conn.execute(db.appointments.insert().values(
            dict(first, appointment_id=999999, appt_start="2026-03-21T16:00:00+00:00",
                 appt_end="2026-03-21T16:45:00+00:00", booked_at="2026-03-14T10:00:00+00:00",
                 status="canceled", canceled_at="2026-03-20T08:00:00+00:00")))
    with engine.connect() as conn:
        targets, X = P.day_features(conn, day, settings)
        everything = F.read_appointments(conn)
        patients = F.read_patients(conn)
    full = F.build_features(everything, everything, patients, TZ, 24.0)
    full.index = everything["appointment_id"].to_numpy()
    expected = full.loc[targets["appointment_id"].to_numpy()].reset_index(drop=True)
    pd.testing.assert_frame_equal(X.reset_index(drop=True), expected)
    assert X.loc[(targets["appointment_id"] == first["appointment_id"]).to_numpy(), "same_day_count"].item() == 2
    assert 999999 not in set(targets["appointment_id"])
    # Only appointments still booked are scored.
    assert set(targets["status"]) == {"booked"}


def test_buckets_follow_the_thresholds(trained, monkeypatch):
    assert list(P.bucket([0.05, 0.1, 0.2, 0.25, 0.9], (0.10, 0.25))) == ["low", "medium", "medium", "high", "high"]
    engine, _ = trained
    monkeypatch.setenv("RISK_BUCKET_THRESHOLDS", "0.0,1.0")
    r = P.score_day("2026-03-20", engine=engine)
    assert set(r.scores["risk_bucket"]) == {"medium"}
    assert ((r.scores["risk"] > 0) & (r.scores["risk"] < 1)).all()


def test_empty_day_gives_a_header_only_file(trained, clinic_env, capsys):
    engine, _ = trained
    assert cli_main(["score", "--day", "2026-03-22"]) == 0  # a Sunday: nothing booked
    path = clinic_env / "outputs" / "scores" / "cancellation_scores_2026-03-22.csv"
    assert path.read_text() == ",".join(P.SCORE_COLUMNS) + "\n"
    assert "scored 0 booked appointment(s)" in capsys.readouterr().out


def test_no_model_says_train_first(clinic_env, engine, capsys):
    with pytest.raises(CannotRun, match="train first: clinic train"):
        P.score_day("2026-03-20", engine=engine)
    assert cli_main(["score", "--day", "2026-03-20"]) == 2
    assert "train first" in capsys.readouterr().err
    assert P.model_is_stale() and P.needs_training()


def test_mismatched_models_are_refused(trained, clinic_env, monkeypatch):
    engine, result = trained
    meta = joblib.load(result.model_path)
    bad = dict(meta, features=meta["features"][:-1])
    joblib.dump(bad, result.model_path)
    with pytest.raises(CannotRun, match="features do not match.*missing \\['age_band'\\]"):
        P.score_day("2026-03-20", engine=engine)
    joblib.dump(dict(meta, sklearn_version="1.4.2"), result.model_path)
    with pytest.raises(CannotRun, match="scikit-learn 1.4.2"):
        P.score_day("2026-03-20", engine=engine)
    joblib.dump(dict(meta, feature_version=0), result.model_path)
    with pytest.raises(CannotRun, match="feature version 0"):
        P.score_day("2026-03-20", engine=engine)
    # A model saved by older code (no format, or format 1) is refused with the reason, and retrained.
    old = {k: v for k, v in meta.items() if k != "model_format"}
    for stale in (old, dict(meta, model_format=1)):
        joblib.dump(stale, result.model_path)
        with pytest.raises(CannotRun, match="saved by older code \\(model format 1, this code reads format 2"):
            P.score_day("2026-03-20", engine=engine)
        assert P.needs_training()
    joblib.dump(meta, result.model_path)
    monkeypatch.setenv("LATE_CANCEL_HOURS", "48")
    with pytest.raises(CannotRun, match="LATE_CANCEL_HOURS=24"):
        P.score_day("2026-03-20", engine=engine)
    assert P.model_is_stale()
    with engine.connect() as conn:  # nothing was written
        assert conn.execute(sa.select(sa.func.count()).select_from(db.risk_scores)).scalar() == 0


def test_staleness(trained):
    _, result = trained
    trained_at = pd.Timestamp(result.metrics["trained_at"])
    assert not P.model_is_stale(7, now=trained_at + pd.Timedelta(days=6))
    assert P.model_is_stale(7, now=trained_at + pd.Timedelta(days=8))
    assert not P.needs_training()


def test_score_notebook_runs_with_papermill(trained, clinic_env, db_url, tmp_path):
    if not db_url.startswith("sqlite"):
        pytest.skip("one notebook run is enough")
    import papermill as pm

    from clinic_lib.core.config import PROJECT_ROOT
    nb = PROJECT_ROOT / "notebooks" / "score.ipynb"
    pm.execute_notebook(str(nb), str(tmp_path / "score_out.ipynb"), parameters={"day": "2026-03-20"},
                        kernel_name="python3", cwd=str(nb.parent), progress_bar=False)
    assert (clinic_env / "outputs" / "scores" / "cancellation_scores_2026-03-20.csv").exists()
