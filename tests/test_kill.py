"""Stopping run_daily.py with a real signal at chosen points of a refresh: its notebook kernel is
gone when run_daily.py has exited, and the day's data and its etl_runs row agree (both or neither),
then and later; the next run (--resume) finishes the day.

The points are reached by a hook the kernel loads at start-up (a sitecustomize.py on PYTHONPATH,
written here; the product has no test hook): it pauses the kernel at the point and writes a
marker with its pid, and the test then signals run_daily.py's process group (the kernel runs in a
session of its own, as jupyter_client starts it).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from clinic_lib.core import db
from clinic_lib.core.config import PROJECT_ROOT
from clinic_lib.core.migrate import migrate

from drops import DAY, DAY_APPOINTMENTS, write_day_drop

RUN_DAILY = str(PROJECT_ROOT / "run_daily.py")

HOOK = '''
import os
if os.environ.get("CLINIC_TEST_PAUSE_AT"):
    import json, re, time
    import sqlalchemy as sa
    from sqlalchemy.engine import base

    POINT, MARKER = os.environ["CLINIC_TEST_PAUSE_AT"], os.environ["CLINIC_TEST_MARKER"]
    WRITE = re.compile(r"^\\s*(INSERT\\s+INTO|DELETE\\s+FROM|UPDATE)\\s+(appointments|payments|patients|physios|physio_hours|etl_runs)\\b", re.I)
    seen = {"writes": 0, "commits": 0}

    def pause():
        with open(MARKER + ".tmp", "w") as f:
            json.dump({"pid": os.getpid(), "point": POINT}, f)
        os.replace(MARKER + ".tmp", MARKER)
        time.sleep(120)

    @sa.event.listens_for(sa.engine.Engine, "before_cursor_execute")
    def _write(conn, cursor, statement, parameters, context, executemany):
        if WRITE.match(statement):
            conn.info["wrote"] = True
            seen["writes"] += 1
            if (POINT, seen["writes"]) in (("first_write", 1), ("second_write", 2)):
                pause()

    _commit = base.Connection._commit_impl

    def _commit_impl(self):
        wrote = self.info.pop("wrote", False)
        if wrote and POINT == "before_commit":
            pause()
        _commit(self)
        if wrote:
            seen["commits"] += 1
            if POINT == "after_commit" and seen["commits"] == 1:
                pause()

    base.Connection._commit_impl = _commit_impl
'''


def make_env(tmp_path, db_url):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    env = {**os.environ, "CLINIC_DATA_DIR": str(tmp_path / "data"), "CLINIC_OUTPUTS_DIR": str(tmp_path / "outputs"),
           "DATABASE_URL": db_url, "CLINIC_TZ": "Europe/Berlin",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))}
    engine = db.make_engine(db_url)
    migrate(engine)
    write_day_drop(tmp_path / "data")
    return env, engine, tmp_path


@pytest.fixture
def kill_env(tmp_path, sqlite_url):
    env, engine, tmp = make_env(tmp_path, sqlite_url)
    yield env, engine, tmp
    engine.dispose()


@pytest.fixture
def pg_kill_env(tmp_path, pg_url):
    env, engine, tmp = make_env(tmp_path, pg_url)
    yield env, engine, tmp
    engine.dispose()


def data_and_log(engine) -> tuple[int, int]:
    """(appointments of the drop in the database, ok refresh rows of the day in etl_runs)"""
    with engine.connect() as conn:
        n = conn.execute(sa.text("SELECT COUNT(*) FROM appointments")).scalar()
        logged = conn.execute(sa.text("SELECT COUNT(*) FROM etl_runs WHERE job = 'refresh' AND status = 'ok'")).scalar()
    return n, logged


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())


def stop_at(env: dict, point: str, sig: int, marker: Path, args=("--day", DAY, "--steps", "refresh")):
    """Start run_daily.py, wait for the kernel to reach ``point``, signal run_daily's process group."""
    env = {**env, "CLINIC_TEST_PAUSE_AT": point, "CLINIC_TEST_MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, RUN_DAILY, "--quiet", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.time() < deadline, "the kernel did not reach the point"
            time.sleep(0.05)
        kernel = json.loads(marker.read_text())["pid"]
        assert alive(kernel)
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err, kernel


POINTS = [  # where the kernel is when run_daily.py gets the signal, and what the database then holds
    ("first_write", signal.SIGTERM, (0, 0)),
    ("second_write", signal.SIGTERM, (0, 0)),
    ("before_commit", signal.SIGTERM, (0, 0)),
    ("after_commit", signal.SIGTERM, (len(DAY_APPOINTMENTS), 1)),
    ("before_commit", signal.SIGINT, (0, 0)),
    ("after_commit", signal.SIGHUP, (len(DAY_APPOINTMENTS), 1)),
]


@pytest.mark.slow
@pytest.mark.parametrize("point, sig, expected", POINTS, ids=[f"{p}-{s.name}" for p, s, _ in POINTS])
def test_stopped_refresh_leaves_data_and_log_in_agreement(kill_env, point, sig, expected):
    stop_and_check(*kill_env, point, sig, expected)


@pytest.mark.slow
@pytest.mark.parametrize("point, expected", [("before_commit", (0, 0)), ("after_commit", (len(DAY_APPOINTMENTS), 1))])
def test_stopped_refresh_on_postgres(pg_kill_env, point, expected):
    stop_and_check(*pg_kill_env, point, signal.SIGTERM, expected)


def stop_and_check(env, engine, tmp, point, sig, expected):
    code, err, kernel = stop_at(env, point, sig, tmp / f"marker-{point}")
    assert code == 128 + sig, err
    assert not alive(kernel), "the kernel outlived run_daily.py"
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"run_daily.py: stopped by {signal.Signals(sig).name} during day {DAY}, step 'refresh'; "
                           "its notebook kernel was stopped before the run lock was let go"), err
    assert "Traceback" not in err
    assert data_and_log(engine) == expected
    time.sleep(2)  # nothing is committed later either
    assert data_and_log(engine) == expected
    state = json.loads((tmp / "outputs" / "runs" / DAY / "state.json").read_text())["steps"]
    assert state["refresh"]["status"] == "stopped"
    # the lock was let go and the day can be finished
    env = {k: v for k, v in env.items() if not k.startswith("CLINIC_TEST_")}
    out = subprocess.run([sys.executable, RUN_DAILY, "--quiet", "--day", DAY, "--steps", "refresh", "--resume"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    n, logged = data_and_log(engine)
    assert (n, logged) == (len(DAY_APPOINTMENTS), expected[1] + 1)


@pytest.mark.slow
def test_stopped_backfill_kernel_is_gone(kill_env):
    """The catch-up's one kernel for the days before the last is stopped the same way."""
    env, engine, tmp = kill_env
    write_day_drop(tmp / "data", day="2026-02-11", appointments=[], payments=[])
    code, err, kernel = stop_at(env, "after_commit", signal.SIGTERM, tmp / "marker",
                                args=("--from", DAY, "--to", "2026-02-11", "--steps", "refresh", "--closed", "2026-02-11"))
    assert code == 143, err
    assert not alive(kernel)
    assert f"during the backfill {DAY} .. {DAY}" in err.strip().splitlines()[-1]
    assert data_and_log(engine) == (len(DAY_APPOINTMENTS), 1)
