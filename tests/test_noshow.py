"""The importer of the public no-show file, on a small attributed sample (tests/data/README.md)."""
from __future__ import annotations

import zipfile
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from clinic_lib.cli import main as cli_main
from clinic_lib.core import db
from clinic_lib.core.errors import CannotRun, UserError
from clinic_lib.ingest import sqlite_ingest
from clinic_lib.ingest.noshow import import_noshow, patient_ids

SAMPLE = Path(__file__).parent / "data" / "noshow_sample.csv"


@pytest.fixture
def sao_paulo(clinic_env, monkeypatch):
    monkeypatch.setenv("CLINIC_TZ", "America/Sao_Paulo")
    return clinic_env


def _frame(engine, table, order):
    with engine.connect() as conn:
        return pd.read_sql(sa.select(db.metadata.tables[table]).order_by(sa.text(order)), conn)


def test_import_sample(sao_paulo, db_url):
    summary = import_noshow(SAMPLE, database_url=db_url)
    assert summary["rows_read"] == 220
    assert summary["dropped_appointment_before_booking"] == 5
    assert summary["appointments"] == 215 and summary["patients"] == 126
    assert summary["patient_ids_not_whole"] == 5 and not summary["patient_ids_dense_ranked"]
    assert summary["age_unknown_rows"] == 1
    engine = db.make_engine(db_url)
    a = _frame(engine, "appointments", "appointment_id")
    p = _frame(engine, "patients", "patient_id").set_index("patient_id")
    assert len(a) == 215 and len(p) == 126
    assert (a["status"] == "no_show").sum() == 47 and set(a["status"]) == {"no_show", "completed"}
    assert 5679978 not in set(a["appointment_id"])  # AppointmentDay 05-09 before ScheduledDay 05-10
    # Float ids: 9377952927E-5 -> 9377952927; a whole float id stays itself.
    assert {9377952927, 53761528476, 14172416655, 3921784439, 4374175652} <= set(p.index)
    assert 465943158731293 in p.index
    # Age -1 -> unknown date of birth; Age 33 on 2016-05-18 -> born 1983-05-18 (approximate).
    assert pd.isna(p.loc[465943158731293, "date_of_birth"])
    assert str(p.loc[9377952927, "date_of_birth"]) == "1983-05-18"
    assert p.loc[9377952927, "gender"] == "F" and p["email"].isna().all()
    a = a.set_index("appointment_id")
    start = pd.to_datetime(a["appt_start"], utc=True)
    booked = pd.to_datetime(a["booked_at"], utc=True)
    # Booked 09:12Z = 06:12 local, before 08:00 local (11:00Z): start stays at 08:00 local.
    assert start[5712759] == pd.Timestamp("2016-05-18T11:00:00Z")
    # Booked 14:22:58Z = 11:22 local, after 08:00: start moves to the next minute.
    assert start[5760144] == pd.Timestamp("2016-06-01T14:23:00Z")
    assert str(a.loc[5760144, "local_date"]) == "2016-06-01"
    assert (booked <= start).all()
    assert (pd.to_datetime(a["appt_end"], utc=True) - start == pd.Timedelta(minutes=30)).all()
    assert a["physio_id"].isna().all() and a["price_estimate_cents"].isna().all()
    assert a["is_first_visit"].sum() == 126
    raw = pd.read_csv(SAMPLE, dtype=str).set_index("AppointmentID")
    assert all(str(a.loc[i, "local_date"]) == raw.loc[str(i), "AppointmentDay"][:10] for i in a.index)
    engine.dispose()
    if db.sqlite_file(db_url):  # the rows went through scratch files: none is left
        assert [f.name for f in db.sqlite_file(db_url).parent.iterdir() if sqlite_ingest.SCRATCH_SUFFIX in f.name] == []


def test_refuses_a_non_empty_database(sao_paulo, db_url):
    import_noshow(SAMPLE, database_url=db_url)
    engine = db.make_engine(db_url)
    before = db.content_hash(engine)
    with pytest.raises(CannotRun, match="non-empty database"):
        import_noshow(SAMPLE, database_url=db_url)
    assert db.content_hash(engine) == before
    engine.dispose()


def test_cli_zip_and_out_file(sao_paulo, tmp_path, capsys):
    z = tmp_path / "noshow.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.write(SAMPLE, "KaggleV2-May-2016.csv")
    out = tmp_path / "real.db"
    assert cli_main(["import-noshow", str(z), "--out", str(out)]) == 0
    assert "appointments: 215" in capsys.readouterr().out
    assert cli_main(["import-noshow", str(z), "--out", str(out)]) == 2
    assert "non-empty" in capsys.readouterr().err


def test_other_clinic_timezone_still_keeps_booking_before_start(clinic_env, tmp_path):
    """In Europe/Berlin 08:00 is 06:00Z: late same-day bookings are moved (or clamped) the same day."""
    summary = import_noshow(SAMPLE, out=tmp_path / "berlin.db")
    engine = db.make_engine(f"sqlite:///{tmp_path / 'berlin.db'}")
    a = _frame(engine, "appointments", "appointment_id")
    assert summary["appointments"] == 215
    assert (pd.to_datetime(a["booked_at"], utc=True) <= pd.to_datetime(a["appt_start"], utc=True)).all()
    engine.dispose()


def test_bad_files(clinic_env, tmp_path):
    text = SAMPLE.read_text()
    bad = tmp_path / "bad.csv"
    bad.write_text(text.replace("No-show", "Noshow", 1))
    with pytest.raises(UserError, match="missing column\\(s\\) No-show"):
        import_noshow(bad, out=tmp_path / "a.db")
    lines = text.splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",Maybe"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="line 4 column No-show: expected Yes or No"):
        import_noshow(bad, out=tmp_path / "b.db")
    engine = db.make_engine(f"sqlite:///{tmp_path / 'b.db'}")
    with engine.connect() as conn:  # nothing written
        assert conn.execute(sa.select(sa.func.count()).select_from(db.appointments)).scalar() == 0
    engine.dispose()
    with pytest.raises(CannotRun, match="file not found"):
        import_noshow(tmp_path / "nope.zip", out=tmp_path / "c.db")


def test_patient_id_mapping_falls_back_to_dense_rank_on_collision():
    ids, notes = patient_ids(pd.Series(["12E-1", "12", "5.0"]))
    # 12E-1 = 1.2 would become 12, which collides with the whole id 12: dense rank instead.
    assert notes["patient_ids_dense_ranked"] and list(ids) == [1, 3, 2]
    ids, notes = patient_ids(pd.Series(["29872499824296", "9377952927E-5", "29872499824296"]))
    assert list(ids) == [29872499824296, 9377952927, 29872499824296] and not notes["patient_ids_dense_ranked"]


def test_training_on_the_sample_is_refused_as_too_small(sao_paulo, tmp_path):
    from clinic_lib.modeling.train import NotEnoughData, train
    import_noshow(SAMPLE, out=tmp_path / "s.db")
    engine = db.make_engine(f"sqlite:///{tmp_path / 's.db'}")
    with pytest.raises(NotEnoughData, match="215 finished appointments"):
        train(as_of="2016-06-08", valid_days=20, engine=engine)
    engine.dispose()
