"""run_daily.py: arguments, papermill run records, failure messages, the run lock."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import nbformat
import pytest
import sqlalchemy as sa

from clinic_lib.core import db
from clinic_lib.core.config import PROJECT_ROOT

from drops import DAY, write_day_drop

RUN_DAILY = str(PROJECT_ROOT / "run_daily.py")


def run_daily(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, RUN_DAILY, *args], env=env or os.environ.copy(),
                          capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.mark.parametrize("args, message", [
    (["--day", "2026-13-01"], "expected a date YYYY-MM-DD"),
    (["--day", "yesterday"], "expected a date YYYY-MM-DD"),
    (["--day", DAY, "--steps", "refresh,explode"], "unknown step(s) explode"),
    (["--from", "2026-02-10"], "--from and --to go together"),
    (["--from", "2026-02-10", "--to", "2026-02-01"], "is after --to"),
])
def test_bad_arguments_exit_2_and_run_nothing(project_env, args, message):
    out = run_daily(*args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert not (project_env / "outputs" / "runs").exists()


def test_refresh_step_leaves_executed_notebook(project_env):
    write_day_drop(project_env / "data")
    out = run_daily("--day", DAY, "--steps", "refresh", cwd="/")  # any working directory
    assert out.returncode == 0, out.stderr
    record = project_env / "outputs" / "runs" / DAY / "02_refresh.ipynb"
    nb = nbformat.read(record, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert f"day = \"{DAY}\"" in injected[0].source
    assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
    state = json.loads((record.parent / "state.json").read_text())
    assert state["steps"]["refresh"]["status"] == "ok"
    engine = db.make_engine(os.environ["DATABASE_URL"])
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM appointments")).scalar() == 4


def test_failing_step_names_step_error_and_notebook(project_env):
    engine = db.make_engine(os.environ["DATABASE_URL"])
    before = db.content_hash(engine)
    (project_env / "data" / "daily" / "2026-02-11").mkdir(parents=True)  # a drop folder without its files
    out = run_daily("--day", "2026-02-11", "--steps", "refresh")
    assert out.returncode == 1
    record = project_env / "outputs" / "runs" / "2026-02-11" / "02_refresh.ipynb"
    assert "step 'refresh' failed" in out.stderr
    assert "file is missing" in out.stderr
    assert str(record) in out.stderr
    last = out.stderr.strip().splitlines()[-1]  # one closing message naming step, error, notebook
    assert last.startswith("run_daily.py: day 2026-02-11, step 'refresh' failed: DropError:") and str(record) in last
    assert "Traceback" not in out.stderr
    assert db.content_hash(engine) == before
    state = json.loads((record.parent / "state.json").read_text())
    assert state["steps"]["refresh"]["status"] == "failed"


def test_resume_skips_steps_that_succeeded(project_env):
    write_day_drop(project_env / "data")
    assert run_daily("--day", DAY, "--steps", "refresh").returncode == 0
    record = project_env / "outputs" / "runs" / DAY / "02_refresh.ipynb"
    mtime = record.stat().st_mtime_ns
    out = run_daily("--day", DAY, "--steps", "refresh", "--resume")
    assert out.returncode == 0, out.stderr
    assert "skipped" in out.stderr
    assert record.stat().st_mtime_ns == mtime


def test_second_run_exits_while_lock_is_held(project_env):
    from clinic_lib.pipeline import runner
    with runner.locked() as lock:
        out = run_daily("--day", DAY, "--steps", "refresh")
        assert lock.is_locked and lock.lock_counter == 1  # taken once, not twice
    assert not lock.is_locked  # let go at the end of the block: the next run may start
    assert out.returncode == 3
    assert "another run_daily.py is running" in out.stderr
    assert not (project_env / "outputs" / "runs").exists()


def test_young_clinic_runs_the_whole_chain_without_a_model(project_env):
    """Too little history to train: the evening still ends with a callback list (heuristic risk)."""
    from drops import HOURS
    write_day_drop(project_env / "data", hours=HOURS)
    out = run_daily("--day", DAY)
    assert out.returncode == 0, out.stderr
    assert "too little history" in out.stderr
    run = project_env / "outputs" / "runs" / DAY
    state = json.loads((run / "state.json").read_text())
    assert {k: v["status"] for k, v in state["steps"].items()} == {
        s: "ok" for s in ("validate", "refresh", "train", "score", "priorities", "reminders", "report")}
    assert not (project_env / "outputs" / "model" / "model.joblib").exists()
    # next clinic day after Tuesday 2026-02-10 is Wednesday; appointment 4 is next Tuesday, so the
    # Wednesday list is empty but written, with its header
    listing = (project_env / "outputs" / "priorities" / "priorities_2026-02-11.csv").read_text().splitlines()
    assert listing[0].startswith("rank,") or "appointment_id" in listing[0]
    assert (run / "report.html").exists()


def test_outputs_that_cannot_be_written_is_could_not_run(project_env, monkeypatch):
    """An OS error before the first step: exit 2, one line naming the path and the cause."""
    write_day_drop(project_env / "data")
    engine = db.make_engine(os.environ["DATABASE_URL"])
    before = db.content_hash(engine)
    in_the_way = project_env / "outputs-file"
    in_the_way.write_text("not a folder")
    monkeypatch.setenv("CLINIC_OUTPUTS_DIR", str(in_the_way))  # the lock's folder is a file
    out = run_daily("--day", DAY, "--steps", "refresh", "--quiet")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"run_daily.py: could not run: cannot take the run lock, {in_the_way}: File exists "
        "(a file is where a folder is needed)"]
    monkeypatch.setenv("CLINIC_OUTPUTS_DIR", str(project_env / "outputs"))
    (project_env / "outputs").mkdir()
    (project_env / "outputs" / "runs").write_text("")  # the run folder's parent is a file
    out = run_daily("--day", DAY, "--steps", "refresh", "--quiet")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"run_daily.py: could not run: cannot prepare the run folder, {project_env / 'outputs' / 'runs' / DAY}: "
        "Not a directory (a file is where a folder is needed)"]
    out = run_daily("--from", "2026-02-09", "--to", DAY, "--steps", "refresh", "--empty-day", "--quiet")
    assert out.returncode == 2 and "cannot prepare the run folder" in out.stderr, out.stderr
    assert db.content_hash(engine) == before  # nothing ran
    (project_env / "outputs" / "runs").unlink()
    assert run_daily("--day", DAY, "--steps", "refresh").returncode == 0  # and the lock was let go


def test_os_error_during_a_step_fails_that_step(project_env):
    write_day_drop(project_env / "data")
    run = project_env / "outputs" / "runs" / DAY
    (run / "report.html").mkdir(parents=True)  # the report cannot be written over a folder
    out = run_daily("--day", DAY, "--steps", "refresh,report")
    assert out.returncode == 1, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"run_daily.py: day {DAY}, step 'report' failed: IsADirectoryError:")
    assert "Traceback" not in out.stderr
    state = json.loads((run / "state.json").read_text())["steps"]
    assert (state["refresh"]["status"], state["report"]["status"]) == ("ok", "failed")
