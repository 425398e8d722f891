"""run_daily.py --from/--to: a catch-up honours --steps, --empty-day and --closed, and treats a day
without a drop folder as empty off the roster and as an error (naming the day) on the roster.

Real run_daily.py processes over a few days of a tiny clinic on SQLite. The roster is Monday to
Friday (drops.HOURS): 2026-02-14 and 02-15 are a weekend.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from clinic_lib.core import db
from clinic_lib.core.config import PROJECT_ROOT

from drops import HOURS, appt, pay, rows, write_drop

RUN_DAILY = str(PROJECT_ROOT / "run_daily.py")
VALIDATE_REFRESH = ["--steps", "validate,refresh"]


def run_daily(*args):
    return subprocess.run([sys.executable, RUN_DAILY, "--quiet", *args], env=os.environ.copy(),
                          capture_output=True, text=True, timeout=600)


def one_visit_drop(data, day: str, appointment_id: int, **kw):
    """A working day's drop: one completed visit at 09:00 and its payment."""
    return write_drop(data / "daily" / day,
                      [appt(appointment_id, f"{day}T09:00:00+01:00", f"{day}T09:30:00+01:00")],
                      [pay(appointment_id, appointment_id, "60.00", f"{day}T09:40:00+01:00")], hours=HOURS, **kw)


def empty_drop(data, day: str):
    return write_drop(data / "daily" / day, [], [], hours=HOURS)


def state(env, day) -> dict:
    path = env / "outputs" / "runs" / day / "state.json"
    return json.loads(path.read_text())["steps"] if path.exists() else {}


def engine():
    return db.make_engine(os.environ["DATABASE_URL"])


def test_steps_validate_over_a_range_writes_nothing(project_env):
    data = project_env / "data"
    for n, day in enumerate(("2026-02-09", "2026-02-10", "2026-02-11"), start=1):
        one_visit_drop(data, day, n)
    e = engine()
    before = db.content_hash(e)
    out = run_daily("--from", "2026-02-09", "--to", "2026-02-11", "--steps", "validate")
    assert out.returncode == 0, out.stderr
    assert db.content_hash(e) == before  # not refreshed: no appointments, no refresh in etl_runs
    assert rows(e, "SELECT COUNT(*) FROM etl_runs WHERE job = 'refresh'") == [(0,)]
    assert rows(e, "SELECT day, status FROM validation_runs ORDER BY day") == [
        ("2026-02-09", "ok"), ("2026-02-10", "ok"), ("2026-02-11", "ok")]
    for day in ("2026-02-09", "2026-02-10", "2026-02-11"):
        assert {k: v["status"] for k, v in state(project_env, day).items()} == {"validate": "ok"}, day
    # --resume then refreshes them: validate was done, refresh was not
    out = run_daily("--from", "2026-02-09", "--to", "2026-02-11", *VALIDATE_REFRESH, "--resume")
    assert out.returncode == 0, out.stderr
    assert rows(e, "SELECT appointment_id FROM appointments ORDER BY 1") == [(1,), (2,), (3,)]
    assert rows(e, "SELECT day FROM etl_runs WHERE job = 'refresh' AND status = 'ok' ORDER BY day") == [
        ("2026-02-09",), ("2026-02-10",), ("2026-02-11",)]
    e.dispose()


def test_weekend_without_drops_is_caught_up_over(project_env):
    """Friday .. Monday, no export on Saturday and Sunday (off the roster): nothing to apply there."""
    data = project_env / "data"
    one_visit_drop(data, "2026-02-13", 1)
    one_visit_drop(data, "2026-02-16", 2)
    out = run_daily("--from", "2026-02-13", "--to", "2026-02-16", *VALIDATE_REFRESH)
    assert out.returncode == 0, out.stderr
    e = engine()
    assert rows(e, "SELECT appointment_id, local_date FROM appointments ORDER BY 1") == [
        (1, "2026-02-13"), (2, "2026-02-16")]
    assert rows(e, "SELECT day FROM etl_runs WHERE job = 'refresh' ORDER BY day") == [("2026-02-13",), ("2026-02-16",)]
    for day, weekday in (("2026-02-14", "Saturday"), ("2026-02-15", "Sunday")):
        steps = state(project_env, day)
        assert {k: v["status"] for k, v in steps.items()} == {"validate": "ok", "refresh": "ok"}
        assert steps["refresh"]["note"] == f"no drop on a {weekday}, a day off the roster: nothing to apply"
    assert "2026-02-14: nothing to do, no drop on a Saturday" in out.stderr
    e.dispose()


def test_range_ending_on_a_sunday_without_drop_builds_mondays_list(project_env):
    """A Sunday evening's catch-up: Sunday has no export; the chain still lists Monday's calls."""
    data = project_env / "data"
    monday = [appt(7, "2026-02-16T09:00:00+01:00", "2026-02-16T09:30:00+01:00", "booked",
                   booked_at="2026-02-13T10:00:00+01:00")]
    write_drop(data / "daily" / "2026-02-13", monday + [appt(1, "2026-02-13T09:00:00+01:00", "2026-02-13T09:30:00+01:00")],
               [pay(1, 1, "60.00", "2026-02-13T09:40:00+01:00")], hours=HOURS)
    out = run_daily("--from", "2026-02-13", "--to", "2026-02-15", "--steps", "validate,refresh,score,priorities")
    assert out.returncode == 0, out.stderr
    listing = (project_env / "outputs" / "priorities" / "priorities_2026-02-16.csv").read_text().splitlines()
    assert len(listing) == 2 and ",7," in listing[1]
    assert state(project_env, "2026-02-15")["refresh"]["note"].startswith("no drop on a Sunday")


def test_missing_drop_on_a_roster_day_names_the_day_and_runs_nothing(project_env):
    data = project_env / "data"
    one_visit_drop(data, "2026-02-09", 1)
    one_visit_drop(data, "2026-02-11", 3)  # Tuesday 2026-02-10: the export did not run
    e = engine()
    before = db.content_hash(e)
    out = run_daily("--from", "2026-02-09", "--to", "2026-02-11", *VALIDATE_REFRESH)
    assert out.returncode == 2, out.stderr
    message = out.stderr.strip().splitlines()[-1]
    assert message.startswith("run_daily.py: no drop for 2026-02-10 (Tuesday), a day on the roster; "
                              "nothing of the range was run.")
    assert str(data / "daily" / "2026-02-10") in message and "re-export" in message
    assert message.endswith("--closed 2026-02-10")
    assert "Traceback" not in out.stderr
    assert db.content_hash(e) == before
    assert not (project_env / "outputs" / "runs").exists()
    # the clinic was closed that Tuesday: named, the range goes through and Tuesday changes nothing
    out = run_daily("--from", "2026-02-09", "--to", "2026-02-11", *VALIDATE_REFRESH, "--closed", "2026-02-10")
    assert out.returncode == 0, out.stderr
    assert rows(e, "SELECT appointment_id FROM appointments ORDER BY 1") == [(1,), (3,)]
    assert state(project_env, "2026-02-10")["refresh"]["note"] == \
        "no drop: the clinic was closed (--empty-day / --closed)"
    e.dispose()


def test_one_roster_day_without_its_drop_says_what_to_do(project_env):
    """--day D without D's drop on a roster day: the same words as a range, with --empty-day."""
    data = project_env / "data"
    one_visit_drop(data, "2026-02-09", 1)
    assert run_daily("--day", "2026-02-09", *VALIDATE_REFRESH).returncode == 0
    e = engine()
    before = db.content_hash(e)
    out = run_daily("--day", "2026-02-10", *VALIDATE_REFRESH)
    assert out.returncode == 2, out.stderr
    message = out.stderr.strip().splitlines()[-1]
    assert message.startswith("run_daily.py: no drop for 2026-02-10 (Tuesday), a day on the roster; "
                              "nothing of the day was run.")
    assert str(data / "daily" / "2026-02-10") in message and message.endswith("run it with --empty-day")
    assert "Traceback" not in out.stderr and db.content_hash(e) == before
    assert not (project_env / "outputs" / "runs" / "2026-02-10").exists()
    out = run_daily("--day", "2026-02-10", *VALIDATE_REFRESH, "--empty-day")
    assert out.returncode == 0, out.stderr
    assert state(project_env, "2026-02-10")["refresh"]["note"] == \
        "no drop: the clinic was closed (--empty-day / --closed)"
    e.dispose()


def test_empty_drops_of_closed_days_need_closed_or_empty_day(project_env):
    """An export that ran on a closed roster day holds no rows: refused unless the day is named."""
    data = project_env / "data"
    one_visit_drop(data, "2026-02-09", 1)
    empty_drop(data, "2026-02-10")
    empty_drop(data, "2026-02-11")  # the last day of the range is closed too
    e = engine()
    out = run_daily("--from", "2026-02-09", "--to", "2026-02-11", *VALIDATE_REFRESH)
    assert out.returncode == 1
    assert "2026-02-10" in out.stderr and "no appointments or payments for 2026-02-10" in out.stderr
    assert rows(e, "SELECT appointment_id FROM appointments") == [(1,)]  # the days before it applied
    out = run_daily("--from", "2026-02-09", "--to", "2026-02-11", *VALIDATE_REFRESH, "--closed", "2026-02-10,2026-02-11")
    assert out.returncode == 0, out.stderr
    assert rows(e, "SELECT DISTINCT day FROM etl_runs WHERE job = 'refresh' AND status = 'ok' ORDER BY day") == [
        ("2026-02-09",), ("2026-02-10",), ("2026-02-11",)]
    # --empty-day over a range: every day of it may be empty
    out = run_daily("--from", "2026-02-10", "--to", "2026-02-11", *VALIDATE_REFRESH, "--empty-day")
    assert out.returncode == 0, out.stderr
    e.dispose()


@pytest.mark.parametrize("args, message", [
    (["--day", "2026-02-10", "--closed", "2026-02-10"], "--closed names days of a range"),
    (["--from", "2026-02-09", "--to", "2026-02-11", "--closed", "2026-02-12"], "--closed 2026-02-12: not in the range"),
    (["--from", "2026-02-09", "--to", "2026-02-11", "--closed", "2026-02-30"], "expected a date YYYY-MM-DD"),
])
def test_bad_closed_days_exit_2(project_env, args, message):
    out = run_daily(*args)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert not (project_env / "outputs" / "runs").exists()
