"""physio.inactive: a booking with a physio who has left is an error, in the drop gate and in
``clinic validate --db`` (SQLite and Postgres).

The corpus (tests/bad_drops, D = Monday 2026-03-30): physio 2 (Jonas Keller) works on D (202,
completed) and the drop books 204 with him for Thursday 2 April (appointments.csv line 6).
"""
from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest

from clinic_lib.cli import main
from clinic_lib.core import db
from clinic_lib.ingest.refresh import load_raw, refresh_day
from clinic_lib.validation.database import validate_db
from clinic_lib.validation.drop import validate_drop

CORPUS = Path(__file__).resolve().parent / "bad_drops"
DAY = "2026-03-30"


@pytest.fixture
def corpus_db(engine, clinic_env):
    load_raw(engine, folder=CORPUS / "base")
    return engine


def _drop(tmp_path, physios: str | None) -> Path:
    folder = tmp_path / DAY
    shutil.copytree(CORPUS / "clean", folder)
    if physios is not None:
        (folder / "physios.csv").write_text("physio_id,full_name,active\n" + physios)
    return folder


def _leaves(engine, physio_id: int) -> None:
    with db.begin_write(engine) as conn:
        conn.execute(db.physios.update().where(db.physios.c.physio_id == physio_id).values(active=0))


def _inactive(report) -> list[tuple]:
    return [(e["line"], e["appointment_id"], e["value"]) for e in report.checks["physio.inactive"].examples]


def test_drop_marking_a_physio_inactive_while_booking_him(corpus_db, tmp_path):
    folder = _drop(tmp_path, "1,Anna Berg,1\n2,Jonas Keller,0\n")
    report = validate_drop(DAY, corpus_db, folder=folder, record=False)
    # 204 (booked for 2 April) is named; 202 (his last day, D itself) and 203 (canceled) are not
    assert _inactive(report) == [(6, 204, 2)]
    assert report.checks["physio.inactive"].severity == "error" and report.exit_code == 1
    assert [c.id for c in report.errors] == ["physio.inactive"]
    # his last day without the booking: nothing to say
    lines = (folder / "appointments.csv").read_text().splitlines()
    (folder / "appointments.csv").write_text("\n".join(lines[:5] + lines[6:]) + "\n")
    assert validate_drop(DAY, corpus_db, folder=folder, record=False).failed == []


def test_database_says_he_left_unless_the_drop_says_he_is_back(corpus_db, tmp_path):
    _leaves(corpus_db, 2)
    folder = _drop(tmp_path, "1,Anna Berg,1\n")  # the drop does not list physio 2: the database's word
    assert _inactive(validate_drop(DAY, corpus_db, folder=folder, record=False)) == [(6, 204, 2)]
    folder = _drop(tmp_path / "back", "1,Anna Berg,1\n2,Jonas Keller,1\n")
    assert validate_drop(DAY, corpus_db, folder=folder, record=False).failed == []


def test_validate_db_names_bookings_from_today_on(corpus_db, capsys):
    refresh_day(DAY, corpus_db, folder=CORPUS / "clean")
    _leaves(corpus_db, 2)
    # on D: 204 (2 April) is ahead; 202 is completed, 203 canceled
    report = validate_db(corpus_db, record=False, now=dt.datetime(2026, 3, 30, 18, tzinfo=dt.timezone.utc))
    assert [c.id for c in report.failed] == ["physio.inactive"]
    assert report.checks["physio.inactive"].count == 1
    assert report.checks["physio.inactive"].examples[0] == {"table": "appointments", "column": "physio_id",
                                                            "appointment_id": 204, "value": 2, "local_date": "2026-04-02"}
    # after 2 April has passed, the booking is history
    later = validate_db(corpus_db, record=False, now=dt.datetime(2026, 4, 3, 8, tzinfo=dt.timezone.utc))
    assert later.failed == []
    # clinic validate --db (today: the real one), for a booking a week ahead
    ahead = dt.date.today() + dt.timedelta(days=7)
    with db.begin_write(corpus_db) as conn:
        conn.execute(db.appointments.update().where(db.appointments.c.appointment_id == 204).values(
            appt_start=f"{ahead}T12:00:00+00:00", appt_end=f"{ahead}T12:30:00+00:00", local_date=ahead))
    assert main(["validate", "--db"]) == 1
    out = capsys.readouterr().out
    assert "physio.inactive: 1 row(s)" in out and "appointment_id=204" in out


def test_validate_db_names_bookings_after_the_day_the_roster_ends(corpus_db, tmp_path):
    """A drop that marks him inactive ends his roster after D (roster history): a booking after D
    stays an error once its day has passed; one on D, his last day, is not."""
    folder = _drop(tmp_path, "1,Anna Berg,1\n2,Jonas Keller,0\n")
    lines = (folder / "appointments.csv").read_text().splitlines()
    # 202 stays booked on D (his last day) instead of completed; its payment goes with that
    lines[3] = lines[3].replace(",completed,", ",booked,")
    (folder / "appointments.csv").write_text("\n".join(lines) + "\n")
    payments = (folder / "payments.csv").read_text().splitlines()
    (folder / "payments.csv").write_text("\n".join(p for p in payments if ",202," not in p) + "\n")
    refresh_day(DAY, corpus_db, folder=folder)
    with corpus_db.connect() as conn:
        last = {str(v)[:10] for (v,) in conn.exec_driver_sql("SELECT valid_to FROM physio_hours WHERE physio_id = 2")}
    assert last == {DAY}
    for now in (dt.datetime(2026, 3, 30, 6, tzinfo=dt.timezone.utc),  # the morning of D
                dt.datetime(2026, 4, 10, 8, tzinfo=dt.timezone.utc)):  # 2 April has passed
        report = validate_db(corpus_db, record=False, now=now)
        assert [(e["appointment_id"], e["local_date"]) for e in report.checks["physio.inactive"].examples] \
            == [(204, "2026-04-02")], now
