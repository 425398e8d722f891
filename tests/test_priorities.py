"""Priorities: the evening callback list, hand-computed on the clinic of reception_data.py."""
from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
import sqlalchemy as sa

from clinic_lib.core import db
from clinic_lib.core.clinic_days import next_clinic_day
from clinic_lib.core.config import get_settings
from clinic_lib.core.timeutil import BadDate
from clinic_lib.reception.priorities import build_priorities, heuristic_risk

from reception_data import DAY, add_model_scores, load_clinic


def _table(engine, day=DAY):
    with engine.connect() as conn:
        rows = conn.execute(sa.select(db.priorities).where(
            db.priorities.c.day == (day.isoformat() if db.is_sqlite(conn) else day))
            .order_by(db.priorities.c.rank)).mappings().all()
    return [dict(r) for r in rows]


def test_heuristic_list_hand_computed(engine, clinic_env):
    load_clinic(engine)
    result = build_priorities(DAY, engine=engine)
    f = result.frame
    # 105 is canceled: not on the list. Scores (default weights risk 1, new .15, phone .10, consent .10, early .05):
    # 102: risk .05 + .10 new + .10*3/30 = .16 (medium); + .15 + .10 + .10 = .51
    # 103: risk .05 + .10*15/30 + .60*0.5 = .40 (high)
    # 104: risk .05 + .10*30/30 = .15 (medium); + .10 no phone ('123') = .25
    # 101: risk .05 + .10*10/30 = .0833 (low); + .05 early slot (09:00) = .1333
    assert list(f["appointment_id"]) == [102, 103, 104, 101]
    assert list(f["rank"]) == [1, 2, 3, 4]
    assert list(f["priority_score"]) == pytest.approx([0.51, 0.40, 0.25, 0.1333])
    assert list(f["risk_score"]) == pytest.approx([0.16, 0.40, 0.15, 0.0833])
    assert list(f["risk_bucket"]) == ["medium", "high", "medium", "low"]
    assert set(f["risk_source"]) == {"heuristic"}
    assert list(f["is_new_patient"]) == [1, 0, 0, 0]
    assert list(f["missing_phone"]) == [1, 0, 1, 0]
    assert list(f["missing_consent"]) == [1, 0, 0, 0]
    assert f["priority_reason"].iloc[0] == ("first visit, medium risk 0.16 (estimated, no model score), "
                                            "no phone, no consent form")
    assert f["priority_reason"].iloc[3] == "low risk 0.08 (estimated, no model score), early slot 09:00"
    # the local start carries the clinic's offset (summer time from 2026-03-29)
    assert f["appt_start"].iloc[3] == "2026-03-30T09:00:00+02:00"
    assert result.risk_sources == {"model": 0, "heuristic": 4}

    csv = pd.read_csv(result.csv_path)
    assert result.csv_path == get_settings().priorities_dir / "priorities_2026-03-30.csv"
    assert list(csv["appointment_id"]) == [102, 103, 104, 101]
    assert csv["patient_name"].iloc[0] == "Bob Brandt"

    rows = _table(engine)
    assert [r["appointment_id"] for r in rows] == [102, 103, 104, 101]
    assert rows[0]["priority_reason"] == f["priority_reason"].iloc[0]
    assert rows[1]["risk_source"] == "heuristic"


def test_model_scores_used_and_rebuild_replaces(engine, clinic_env):
    load_clinic(engine)
    add_model_scores(engine, {101: (0.41, "high"), 102: (0.05, "low")})
    f = build_priorities(DAY, engine=engine).frame
    # 101: .41 + .05 early = .46; 102: .05 + .35 = .40, tie with 103 (.40) broken by start time (11:00 < 14:00)
    assert list(f["appointment_id"]) == [101, 102, 103, 104]
    assert list(f["priority_score"]) == pytest.approx([0.46, 0.40, 0.40, 0.25])
    assert list(f["risk_source"]) == ["model", "model", "heuristic", "heuristic"]
    assert f["priority_reason"].iloc[0] == "high risk 0.41, early slot 09:00"
    assert f["priority_reason"].iloc[1] == "first visit, low risk 0.05, no phone, no consent form"

    # 104 is canceled in the evening: rebuilding D replaces the day's rows
    with db.begin_write(engine) as conn:
        conn.execute(db.appointments.update().where(db.appointments.c.appointment_id == 104)
                     .values(status="canceled", canceled_at="2026-03-29T19:00:00+00:00"))
    build_priorities(DAY, engine=engine)
    assert [r["appointment_id"] for r in _table(engine)] == [101, 102, 103]
    # the other day's list is untouched by a rebuild of D
    build_priorities(DAY + dt.timedelta(days=1), engine=engine)
    build_priorities(DAY, engine=engine)
    assert [r["appointment_id"] for r in _table(engine, DAY + dt.timedelta(days=1))] == [301]


def test_weights_from_environment(engine, clinic_env, monkeypatch):
    load_clinic(engine)
    monkeypatch.setenv("PRIORITY_WEIGHT_EARLY_SLOT", "1.0")
    f = build_priorities(DAY, engine=engine).frame
    assert f["appointment_id"].iloc[0] == 101  # .0833 + 1.0
    assert f["priority_score"].iloc[0] == pytest.approx(1.0833)


def test_empty_day_and_bad_day(engine, clinic_env):
    load_clinic(engine)
    result = build_priorities("2026-04-04", engine=engine)  # a Saturday: nothing booked
    assert len(result) == 0 and result.csv_path.exists()
    with pytest.raises(BadDate, match="YYYY-MM-DD"):
        build_priorities("2026-02-30", engine=engine)
    with pytest.raises(BadDate):
        build_priorities("2026-01-01' OR 1=1 --", engine=engine)
    assert _table(engine) == []


def test_failed_build_changes_nothing(engine, clinic_env, tmp_path, monkeypatch):
    load_clinic(engine)
    build_priorities(DAY, engine=engine)
    before = _table(engine)
    # the outputs folder is a file: the CSV cannot be written, so the table must stay as it was
    blocker = tmp_path / "blocked"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CLINIC_OUTPUTS_DIR", str(blocker))
    with db.begin_write(engine) as conn:
        conn.execute(db.appointments.update().where(db.appointments.c.appointment_id == 104)
                     .values(status="canceled", canceled_at="2026-03-29T19:00:00+00:00"))
    with pytest.raises(OSError):
        build_priorities(DAY, engine=engine)
    assert _table(engine) == before
    with engine.connect() as conn:
        last = conn.execute(sa.select(db.etl_runs.c.job, db.etl_runs.c.status)
                            .order_by(db.etl_runs.c.run_id.desc()).limit(1)).one()
    assert tuple(last) == ("priorities", "failed")


def test_heuristic_is_capped():
    risk = heuristic_risk(pd.Series([1, 0]), pd.Series([400.0, -3.0]), pd.Series([1.0, 0.0]))
    assert list(risk) == pytest.approx([0.85, 0.05])  # .05 + .10 + .10 + .60; negative lead counts as 0


def test_next_clinic_day(engine):
    load_clinic(engine)
    # Friday -> Monday (physio 3's Saturday hours do not count: inactive); Saturday -> Monday; Monday -> Tuesday
    assert next_clinic_day(engine, dt.date(2026, 3, 27)) == dt.date(2026, 3, 30)
    assert next_clinic_day(engine, "2026-03-28") == dt.date(2026, 3, 30)
    assert next_clinic_day(engine, dt.date(2026, 3, 30)) == dt.date(2026, 3, 31)
    with db.begin_write(engine) as conn:
        conn.execute(db.physios.update().where(db.physios.c.physio_id == 3).values(active=1))
    assert next_clinic_day(engine, dt.date(2026, 3, 27)) == dt.date(2026, 3, 28)


def test_next_clinic_day_without_roster(sqlite_url):
    from clinic_lib.core.migrate import migrate
    e = db.make_engine(sqlite_url)
    migrate(e)
    assert next_clinic_day(e, dt.date(2026, 10, 23)) == dt.date(2026, 10, 26)  # Mon-Fri assumed


@pytest.fixture
def sqlite_clinic(tmp_path, monkeypatch, sqlite_url):
    """The reception clinic in a SQLite file, with the project environment pointing at it."""
    from clinic_lib.core.migrate import migrate
    monkeypatch.setenv("CLINIC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CLINIC_OUTPUTS_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.setenv("CLINIC_TZ", "Europe/Berlin")
    e = db.make_engine(sqlite_url)
    migrate(e)
    load_clinic(e)
    yield e
    e.dispose()


def test_cli_priorities(sqlite_clinic, capsys):
    from clinic_lib.cli import main
    assert main(["priorities", "--day", "2026-03-30"]) == 0
    out = capsys.readouterr().out
    assert "priorities for 2026-03-30: 4 appointment(s)" in out and "Bob Brandt" in out
    with pytest.raises(SystemExit) as exc:
        main(["priorities", "--day", "2026-13-01"])
    assert exc.value.code == 2


def test_priorities_notebook_with_parameters_only(sqlite_clinic, tmp_path):
    import papermill as pm

    from clinic_lib.core.config import PROJECT_ROOT
    out = tmp_path / "priorities_out.ipynb"
    pm.execute_notebook(str(PROJECT_ROOT / "notebooks" / "priorities.ipynb"), str(out),
                        parameters={"day": "2026-03-30"}, cwd=str(PROJECT_ROOT / "notebooks"), progress_bar=False,
                        kernel_name="python3")
    assert [r["appointment_id"] for r in _table(sqlite_clinic)] == [102, 103, 104, 101]
    assert (tmp_path / "outputs" / "priorities" / "priorities_2026-03-30.csv").exists()


# --- the randomised call holdout ---------------------------------------------------------------------

def _u(appointment_id: int, secret: bytes) -> float:
    """The holdout's uniform number, computed here independently of holdout.py."""
    import hashlib
    import hmac
    digest = hmac.new(secret, b"call-holdout:" + str(appointment_id).encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def test_holdout_marks_rows_that_keep_their_rank(engine, clinic_env, monkeypatch):
    load_clinic(engine)
    off = build_priorities(DAY, engine=engine).frame
    assert list(off["holdout"]) == [0, 0, 0, 0]
    assert not (clinic_env / "data" / "call_holdout_secret").exists()  # no secret made while off

    monkeypatch.setenv("CLINIC_HOLDOUT_SECRET", "test-secret")
    # HMAC-SHA256 of "call-holdout:<id>" under "test-secret": 101 -> .2138, 103 -> .3232, 104 -> .6272, 102 -> .9406
    assert [round(_u(i, b"test-secret"), 4) for i in (101, 102, 103, 104)] == [0.2138, 0.9406, 0.3232, 0.6272]
    monkeypatch.setenv("CALL_HOLDOUT_SHARE", "0.3")
    f = build_priorities(DAY, engine=engine).frame
    assert dict(zip(f["appointment_id"], f["holdout"])) == {102: 0, 103: 0, 104: 0, 101: 1}
    monkeypatch.setenv("CALL_HOLDOUT_SHARE", "0.5")
    result = build_priorities(DAY, engine=engine)
    f = result.frame
    # the same list in the same order with the same ranks; 101 and 103 are held out
    assert list(f["appointment_id"]) == list(off["appointment_id"]) == [102, 103, 104, 101]
    assert list(f["rank"]) == [1, 2, 3, 4]
    assert list(f["holdout"]) == [0, 1, 0, 1]
    assert f["priority_reason"].iloc[1] == "hold out: do not call; high risk 0.40 (estimated, no model score)"
    assert f["priority_reason"].iloc[0] == off["priority_reason"].iloc[0]
    csv = pd.read_csv(result.csv_path)
    assert list(csv.columns)[-1] == "holdout" and list(csv["holdout"]) == [0, 1, 0, 1]
    assert [(r["appointment_id"], r["holdout"]) for r in _table(engine)] == [(102, 0), (103, 1), (104, 0), (101, 1)]


def test_holdout_secret_made_once_in_the_private_data_folder(engine, clinic_env, monkeypatch):
    import stat
    load_clinic(engine)
    monkeypatch.delenv("CLINIC_HOLDOUT_SECRET", raising=False)
    monkeypatch.setenv("CALL_HOLDOUT_SHARE", "0.5")
    first = build_priorities(DAY, engine=engine).frame
    path = clinic_env / "data" / "call_holdout_secret"
    secret = path.read_text().strip()
    assert len(secret) == 64 and int(secret, 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [f.name for f in path.parent.iterdir() if f.name.startswith(".call_holdout")] == []
    again = build_priorities(DAY, engine=engine).frame
    assert path.read_text().strip() == secret
    expected = [int(_u(i, secret.encode()) < 0.5) for i in first["appointment_id"]]
    assert list(first["holdout"]) == list(again["holdout"]) == expected
    # an empty file is refused, not used as a secret
    from clinic_lib.core.errors import CannotRun
    path.write_text("")
    with pytest.raises(CannotRun, match="call_holdout_secret is empty"):
        build_priorities(DAY, engine=engine)


@pytest.mark.parametrize("phone, missing", [
    ("4.91512E+11", 1),  # a spreadsheet's: 8 digits, none after the sixth known
    ("+49 151 234567890123456", 1),  # digits enough, but no possible German number
    ("+49 151 2222222", 0),
    ("", 1),
])
def test_missing_phone_is_validations_dialable_rule(engine, clinic_env, phone, missing):
    """The list calls a number missing exactly when the validation gate would report it."""
    from clinic_lib.validation.values import phone_not_scientific, phone_ok
    load_clinic(engine)
    with db.begin_write(engine) as conn:  # patient 3 has appointment 103 on D
        conn.execute(db.patients.update().where(db.patients.c.patient_id == 3).values(phone=phone or None))
    f = build_priorities(DAY, engine=engine).frame
    assert f.loc[f["appointment_id"] == 103, "missing_phone"].item() == missing
    value = pd.Series([phone])
    reported = not (phone_ok(value) & phone_not_scientific(value)).item()
    assert reported == bool(missing and phone)
