"""End to end: the whole chain as a user runs it, on SQLite and Postgres (marked slow).

- a fresh clone runs the README's `make demo` and leaves every output a new user expects;
- the chain over 7 demo days, run twice, leaves an identical database;
- a backfill whose day 3 of 5 fails validation stops there, with days 1-2 applied and nothing of day 3;
- two runs at once never interleave: the second exits with a clear message.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from clinic_lib.core import db
from clinic_lib.core.config import PROJECT_ROOT

pytestmark = pytest.mark.slow

TODAY = dt.date(2026, 11, 24)  # a Tuesday
DEMO_ARGS = ["--seed", "3", "--today", str(TODAY), "--physios", "3", "--patients", "600",
             "--days-history", "400", "--days-ahead", "14", "--drop-days", "10"]
FIRST_DROP = TODAY - dt.timedelta(days=9)  # raw ends the day before; drops apply in order from here


def clinic(*args, env, check=True):
    out = subprocess.run([sys.executable, "-m", "clinic_lib", *args], env=env, capture_output=True,
                         text=True, timeout=900)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def run_daily(*args, env):
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "run_daily.py"), "--quiet", *args],
                          env=env, capture_output=True, text=True, timeout=1800)


@pytest.fixture
def demo_env(tmp_path, db_url):
    """A small demo clinic loaded into SQLite or Postgres, with its own data and outputs folders."""
    env = {**os.environ, "CLINIC_DATA_DIR": str(tmp_path / "data"), "CLINIC_OUTPUTS_DIR": str(tmp_path / "outputs"),
           "DATABASE_URL": db_url, "CLINIC_TZ": "Europe/Berlin", "MODEL_MAX_AGE_DAYS": "30"}
    clinic("demo", *DEMO_ARGS, env=env)
    clinic("load", env=env)
    return env


def test_seven_days_twice_identical_database(demo_env):
    first, last = FIRST_DROP, FIRST_DROP + dt.timedelta(days=6)
    out = run_daily("--from", str(first), "--to", str(last), env=demo_env)
    assert out.returncode == 0, out.stderr
    engine = db.make_engine(demo_env["DATABASE_URL"])
    everything = db.DATA_TABLES + db.DERIVED_TABLES
    after_first = db.content_hash(engine, tables=everything)
    outputs = Path(demo_env["CLINIC_OUTPUTS_DIR"])
    priorities = sorted((outputs / "priorities").glob("priorities_*.csv"))
    snapshot = {p.name: p.read_text() for p in priorities}
    out = run_daily("--from", str(first), "--to", str(last), env=demo_env)
    assert out.returncode == 0, out.stderr
    assert db.content_hash(engine, tables=everything) == after_first
    assert {p.name: p.read_text() for p in sorted((outputs / "priorities").glob("priorities_*.csv"))} == snapshot
    with engine.connect() as conn:
        ok_days = conn.execute(sa.text("SELECT COUNT(DISTINCT day) FROM etl_runs WHERE job = 'refresh' AND status = 'ok'")).scalar()
    assert ok_days == 7
    engine.dispose()


def test_backfill_stops_at_first_bad_day(demo_env):
    days = [FIRST_DROP + dt.timedelta(days=n) for n in range(5)]
    data = Path(demo_env["CLINIC_DATA_DIR"])
    engine = db.make_engine(demo_env["DATABASE_URL"])
    # what the database looks like with days 1-2 applied, and nothing after
    out = run_daily("--from", str(days[0]), "--to", str(days[1]), "--steps", "validate,refresh", env=demo_env)
    assert out.returncode == 0, out.stderr
    expected = db.content_hash(engine)
    # corrupt day 3: a status typed by hand
    bad = data / "daily" / str(days[2]) / "appointments.csv"
    text = bad.read_text().splitlines()
    assert len(text) > 1, "the demo day should have appointments"
    fields = text[1].split(",")
    fields[6] = "cancelled"
    text[1] = ",".join(fields)
    bad.write_text("\n".join(text) + "\n")
    out = run_daily("--from", str(days[0]), "--to", str(days[4]), env=demo_env)
    assert out.returncode == 1
    assert str(days[2]) in out.stderr and "status" in out.stderr
    assert db.content_hash(engine) == expected
    with engine.connect() as conn:
        refreshed = {str(r[0]) for r in conn.execute(sa.text(
            "SELECT DISTINCT day FROM etl_runs WHERE job = 'refresh' AND status = 'ok'"))}
    assert refreshed == {str(days[0]), str(days[1])}
    engine.dispose()


def test_full_chain_for_one_day_leaves_every_output(demo_env):
    out = run_daily("--from", str(FIRST_DROP), "--to", str(TODAY - dt.timedelta(days=1)),
                    "--steps", "validate,refresh", env=demo_env)
    assert out.returncode == 0, out.stderr
    out = run_daily("--day", str(TODAY), env=demo_env)
    assert out.returncode == 0, out.stderr
    outputs = Path(demo_env["CLINIC_OUTPUTS_DIR"])
    run = outputs / "runs" / str(TODAY)
    names = sorted(p.name for p in run.glob("*.ipynb"))
    assert names == ["01_validate.ipynb", "02_refresh.ipynb", "03_train.ipynb", "04_score.ipynb",
                     "05_priorities.ipynb", "06_reminders.ipynb"]
    assert (run / "report.html").stat().st_size > 10_000
    next_day = TODAY + dt.timedelta(days=1)  # Wednesday
    assert (outputs / "scores" / f"cancellation_scores_{next_day}.csv").exists()
    priorities = (outputs / "priorities" / f"priorities_{next_day}.csv").read_text().splitlines()
    assert len(priorities) > 1
    assert list((outputs / "outbox").rglob("*.eml"))
    metrics = json.loads((outputs / "model" / "metrics.json").read_text())
    assert 0.5 < metrics["holdout"]["booked_before_evening"]["roc_auc"] <= 1
    assert metrics["deployed"]["train_end"] == str(TODAY)  # the saved model learned up to the run day
    # and the API serves that list from the database
    from clinic_lib.reception.api import create_app
    os.environ.update({k: demo_env[k] for k in ("DATABASE_URL", "CLINIC_DATA_DIR", "CLINIC_OUTPUTS_DIR")})
    try:
        os.environ["CLINIC_API_TOKEN"] = "t" * 32
        app = create_app()
        response = app.test_client().get(f"/priorities?day={next_day}", headers={"Authorization": "Bearer " + "t" * 32})
        assert response.status_code == 200
        assert response.get_json()["count"] == len(priorities) - 1
    finally:
        for key in ("DATABASE_URL", "CLINIC_DATA_DIR", "CLINIC_OUTPUTS_DIR", "CLINIC_API_TOKEN"):
            os.environ.pop(key, None)


def test_two_runs_at_once_never_interleave(demo_env):
    day = str(FIRST_DROP)
    first = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "run_daily.py"), "--quiet", "--day", day,
                              "--steps", "validate,refresh"], env=demo_env, stderr=subprocess.PIPE, text=True)
    lock = Path(demo_env["CLINIC_OUTPUTS_DIR"]) / ".run.lock"
    import time
    deadline = time.time() + 60
    from filelock import FileLock, Timeout
    while time.time() < deadline:  # wait until the first run holds the lock
        try:
            with FileLock(str(lock), timeout=0):
                pass
        except Timeout:
            break
        time.sleep(0.05)
    second = run_daily("--day", day, "--steps", "validate,refresh", env=demo_env)
    first_err = first.communicate(timeout=600)[1]
    assert first.returncode == 0, first_err
    assert second.returncode == 3
    assert "another run_daily.py is running" in second.stderr


@pytest.mark.skipif(not shutil.which("git") or not shutil.which("make"), reason="needs git and make")
def test_fresh_clone_make_demo(tmp_path):
    """A new user: clone, `make demo`; then the outputs the README promises are there."""
    clone = tmp_path / "clinic-ops"
    subprocess.run(["git", "clone", "-q", str(PROJECT_ROOT), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CLINIC_", "DATABASE_URL", "EMAIL_", "VIRTUAL_ENV"))}
    env["PATH"] = ":".join(p for p in env.get("PATH", "").split(":") if ".venv" not in p)
    out = subprocess.run(["make", "demo"], cwd=clone, env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    day = (clone / "data" / "demo.json").exists() and json.loads((clone / "data" / "demo.json").read_text())["today"]
    run = clone / "outputs" / "runs" / day
    assert {"01_validate.ipynb", "02_refresh.ipynb", "04_score.ipynb", "05_priorities.ipynb",
            "06_reminders.ipynb", "report.html"} <= {p.name for p in run.iterdir()}
    assert list((clone / "outputs" / "priorities").glob("priorities_*.csv"))
    assert (clone / "outputs" / "model" / "metrics.json").exists()
    assert list((clone / "outputs" / "outbox").rglob("*.eml"))
    assert "make dashboard" in out.stdout and "priorities" in out.stdout
    # the catch-up replayed the evenings of the demo's drops: the model is judged on each of them
    import sqlite3
    with sqlite3.connect(clone / "data" / "clinic.db") as conn:
        judged = conn.execute("SELECT count(*), min(day), sum(n_outcome) FROM model_monitoring").fetchone()
    demo = json.loads((clone / "data" / "demo.json").read_text())
    assert judged[0] >= 10 and judged[1] > demo["first_drop"] and judged[2] > 500


def _day_text(value) -> str:
    return value.isoformat() if isinstance(value, dt.date) else str(value)[:10]


def test_catch_up_replays_each_evening_with_what_was_known(demo_env):
    """A range scores each next clinic day with a model that learned only from the days before it,
    judges those scores once their outcomes arrive, and sends no reminders for days gone by."""
    last = FIRST_DROP + dt.timedelta(days=4)
    out = run_daily("--from", str(FIRST_DROP), "--to", str(last), env=demo_env)
    assert out.returncode == 0, out.stderr
    engine = db.make_engine(demo_env["DATABASE_URL"])
    with engine.connect() as conn:
        scored = conn.execute(sa.text(
            "SELECT DISTINCT r.day, m.as_of FROM risk_scores r JOIN model_runs m ON m.model_version = r.model_version"
        )).all()
        judged = {_day_text(r[0]): (r[1], r[2]) for r in conn.execute(sa.text(
            "SELECT day, n_scored, n_outcome FROM model_monitoring"))}
        reminder_days = {_day_text(r[0]) for r in conn.execute(sa.text("SELECT DISTINCT a.local_date FROM reminders r "
                                                                 "JOIN appointments a ON a.appointment_id = r.appointment_id"))}
        runs = conn.execute(sa.text("SELECT as_of FROM model_runs ORDER BY as_of")).all()
    scored_days = sorted(_day_text(d) for d, _ in scored)
    # every evening from the first drop on scored its next clinic day (the demo clinic opens Mon-Sat)
    assert scored_days[0] == str(FIRST_DROP + dt.timedelta(days=1))
    assert len(scored_days) == len(set(scored_days)) >= 4
    for day, as_of in scored:
        assert _day_text(as_of) < _day_text(day), f"{day} was scored by a model that knew {as_of}"
    # the scored days whose drop came are judged, each of its scored appointments counted once
    assert set(judged) == {d for d in scored_days if d <= str(last)}
    assert all(n_scored >= n_outcome > 0 for n_scored, n_outcome in judged.values())
    # the first evening had no model: it trained as of that day, and said why
    assert _day_text(runs[0][0]) == str(FIRST_DROP)
    metrics = json.loads((Path(demo_env["CLINIC_OUTPUTS_DIR"]) / "model" / "metrics.json").read_text())
    assert metrics["retrain_reason"] == "there is no usable model"
    # reminders only for the day after the last evening
    assert len(reminder_days) <= 1 and all(d > str(last) for d in reminder_days)
    # validate and refresh only: no evening replayed, nothing scored for the range's earlier days
    out = run_daily("--from", str(last + dt.timedelta(days=1)), "--to", str(last + dt.timedelta(days=2)),
                    "--steps", "validate,refresh", env=demo_env)
    assert out.returncode == 0, out.stderr
    with engine.connect() as conn:
        after = {_day_text(r[0]) for r in conn.execute(sa.text("SELECT DISTINCT day FROM risk_scores"))}
    assert after == set(scored_days)
    engine.dispose()


def test_train_step_retrains_on_evidence_and_says_why(demo_env):
    """The evening's train step asks the retrain rule: a young model holding up is kept; the same
    model judged by a stricter calibration threshold is retrained, the reason in the run and the model."""
    last = FIRST_DROP + dt.timedelta(days=5)
    out = run_daily("--from", str(FIRST_DROP), "--to", str(last), env=demo_env)
    assert out.returncode == 0, out.stderr
    outputs = Path(demo_env["CLINIC_OUTPUTS_DIR"])
    model_file = outputs / "model" / "model.joblib"
    version = json.loads((outputs / "model" / "metrics.json").read_text())["model_version"]
    state = json.loads((outputs / "runs" / str(last) / "state.json").read_text())
    assert state["steps"]["train"]["note"] == "model is fresh and holding up, not retrained"
    strict = {**demo_env, "RETRAIN_MIN_SCORED": "20", "RETRAIN_CALIBRATION_GAP": "0.0001"}
    out = run_daily("--day", str(last), "--steps", "train", env=strict)
    assert out.returncode == 0, out.stderr
    state = json.loads((outputs / "runs" / str(last) / "state.json").read_text())
    note = state["steps"]["train"]["note"]
    assert note.startswith("retrained because over the last 4 weeks (") and "RETRAIN_CALIBRATION_GAP = 0.0001" in note
    metrics = json.loads((outputs / "model" / "metrics.json").read_text())
    assert metrics["model_version"] != version and metrics["retrain_reason"] == note.removeprefix("retrained because ")
    assert model_file.exists()
