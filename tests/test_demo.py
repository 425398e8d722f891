"""The demo generator: format, determinism, loadability, scheduling rules and the planted effects.

Small sizes (3 physios, 200 patients, 120 days) on SQLite; a world spans the DST change of
2026-03-29 (the drops run from 2026-03-20 to 2026-04-02, a Thursday).
"""
from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from clinic_lib.core import db
from clinic_lib.ingest import refresh
from clinic_lib.ingest.demo import generate_demo
from clinic_lib.ingest.demo_world import build_world
from clinic_lib.ingest.drop_format import COLUMNS, read_csv_text

# one worker runs this module: its demo clinics are built once for all its tests
pytestmark = pytest.mark.xdist_group("test_demo")

TODAY = dt.date(2026, 4, 2)  # Thursday; the drops cross the DST change of Sunday 2026-03-29
DROP_DAYS = 14
SMALL = dict(physios=3, patients=200, days_history=120, days_ahead=21, drop_days=DROP_DAYS)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.csv"))}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One small demo: raw as of the day before the first drop, plus a raw export as of TODAY."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLINIC_TZ", "Europe/Berlin")
        data = tmp_path_factory.mktemp("demo")
        first_drop = TODAY - dt.timedelta(days=DROP_DAYS - 1)
        summary = generate_demo(data, seed=11, today=TODAY, raw_as_of=first_drop - dt.timedelta(days=1), **SMALL)
        # the same world (calls until the first drop, as in the one above) exported at the end of TODAY
        generate_demo(data / "as_of_today", seed=11, today=TODAY, raw_as_of=TODAY, raw_dir=data / "raw_today",
                      calls_until=first_drop - dt.timedelta(days=1), **{**SMALL, "drop_days": 0})
        yield data, summary


@pytest.fixture
def env(tmp_path, monkeypatch, sqlite_url):
    monkeypatch.setenv("CLINIC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CLINIC_OUTPUTS_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.setenv("CLINIC_TZ", "Europe/Berlin")
    return sqlite_url


@pytest.fixture
def loaded(demo, env):
    """raw + every drop in order, on SQLite."""
    data, _ = demo
    engine = db.make_engine(env)
    refresh.load_raw(engine, folder=data / "raw")
    for k in range(DROP_DAYS - 1, -1, -1):
        day = TODAY - dt.timedelta(days=k)
        refresh.refresh_day(day, engine=engine, folder=data / "daily" / day.isoformat(), allow_empty=True)
    yield engine
    engine.dispose()


def _frame(engine, sql):
    with engine.connect() as conn:
        return pd.read_sql(sa.text(sql), conn)


# --- format and determinism ------------------------------------------------------------------------

def test_files_and_columns(demo):
    data, summary = demo
    for table in COLUMNS:
        assert list(read_csv_text(data / "raw" / f"{table}.csv").columns) == COLUMNS[table]
    days = sorted(p.name for p in (data / "daily").iterdir())
    assert days == [(TODAY - dt.timedelta(days=k)).isoformat() for k in range(DROP_DAYS - 1, -1, -1)]
    for day in days:
        for table in ("patients", "physios", "appointments", "payments"):
            assert list(read_csv_text(data / "daily" / day / f"{table}.csv").columns) == COLUMNS[table]
    appts = read_csv_text(data / "raw" / "appointments.csv")
    # local wall clock with its offset: +01:00 before the DST change, +02:00 after
    assert appts["appt_start"].str.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:00\+0[12]:00$").all()
    assert appts["price_estimate"].isin(["45.00", "60.00", "75.00", "90.00"]).all()
    winter = appts["appt_start"].str.startswith("2026-03-2") & (appts["appt_start"].str[:10] < "2026-03-29")
    assert appts.loc[winter, "appt_start"].str.endswith("+01:00").all() and winter.any()
    drop = read_csv_text(data / "daily" / "2026-03-30" / "appointments.csv")
    on_day = drop["appt_start"].str.startswith("2026-03-30")
    assert on_day.any() and drop.loc[on_day, "appt_start"].str.endswith("+02:00").all()
    assert summary["physios"] == 3 and summary["appointments"] > 500


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kw = dict(today=dt.date(2026, 11, 25), physios=2, patients=80, days_history=60, days_ahead=10, drop_days=3)
    generate_demo(tmp_path / "a", seed=5, **kw)
    generate_demo(tmp_path / "b", seed=5, **kw)
    generate_demo(tmp_path / "c", seed=6, **kw)
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert len(a) == 7 + 3 * 4  # raw: five clinic files and the call history
    assert a == b
    assert a["raw/appointments.csv"] != c["raw/appointments.csv"]


# --- loading ---------------------------------------------------------------------------------------

def test_raw_as_of_yesterday_loads_and_today_applies(tmp_path, env):
    kw = dict(physios=2, patients=100, days_history=60, days_ahead=14, drop_days=2)
    summary = generate_demo(tmp_path / "d", seed=3, today=TODAY, raw_as_of=TODAY - dt.timedelta(days=1), **kw)
    assert summary["raw_as_of"] == (TODAY - dt.timedelta(days=1)).isoformat()
    # by default raw ends the day before the first drop, so every drop can be replayed in order
    default = generate_demo(tmp_path / "e", seed=3, today=TODAY, **kw)
    assert default["raw_as_of"] == (TODAY - dt.timedelta(days=2)).isoformat()
    engine = db.make_engine(env)
    n = refresh.load_raw(engine, folder=tmp_path / "d" / "raw")
    assert n > 0
    # raw holds nothing that starts on TODAY with a final status, nor anything booked on TODAY
    a = _frame(engine, "SELECT status, local_date, booked_at FROM appointments")
    assert set(a.loc[a["local_date"] >= TODAY.isoformat(), "status"]) <= {"booked", "canceled"}
    end_yesterday = pd.Timestamp(dt.datetime(2026, 4, 1, 22, 0), tz="UTC")  # 2026-04-02 00:00 +02:00
    assert (pd.to_datetime(a["booked_at"], utc=True) < end_yesterday).all()
    # the drop for TODAY applies on top of it
    refresh.refresh_day(TODAY, engine=engine, folder=tmp_path / "d" / "daily" / TODAY.isoformat())
    engine.dispose()


def test_drops_apply_in_order_and_equal_a_raw_export_of_today(demo, loaded, tmp_path):
    data, _ = demo
    other = db.make_engine(f"sqlite:///{tmp_path / 'today.db'}")
    refresh.load_raw(other, folder=data / "raw_today")
    assert db.content_hash(loaded) == db.content_hash(other)
    other.dispose()


# --- scheduling rules ------------------------------------------------------------------------------

def test_no_physio_or_patient_double_booked(loaded):
    for who in ("physio_id", "patient_id"):
        clash = _frame(loaded, f"""
            SELECT COUNT(*) AS n FROM appointments a JOIN appointments b
              ON a.{who} = b.{who} AND a.appointment_id < b.appointment_id
             AND a.appt_start < b.appt_end AND b.appt_start < a.appt_end
             WHERE a.status <> 'canceled' AND b.status <> 'canceled'""")
        assert int(clash["n"].iloc[0]) == 0, who


def test_appointments_inside_rosters(loaded):
    a = _frame(loaded, "SELECT appointment_id, physio_id, appt_start, appt_end FROM appointments")
    hours = _frame(loaded, "SELECT physio_id, weekday, start_time, end_time FROM physio_hours")
    start = pd.to_datetime(a["appt_start"], utc=True).dt.tz_convert("Europe/Berlin")
    end = pd.to_datetime(a["appt_end"], utc=True).dt.tz_convert("Europe/Berlin")
    a["weekday"] = start.dt.day_of_week
    a["s"], a["e"] = start.dt.strftime("%H:%M"), end.dt.strftime("%H:%M")
    assert (start.dt.date == end.dt.date).all()
    assert set(((end - start).dt.total_seconds() // 60).astype(int)) <= {30, 45, 60}
    assert (start.dt.minute % 15 == 0).all()
    m = a.merge(hours, on=["physio_id", "weekday"], how="left")
    m["inside"] = (m["s"] >= m["start_time"]) & (m["e"] <= m["end_time"])
    inside = m.groupby("appointment_id")["inside"].any()
    assert inside.all(), a[a["appointment_id"].isin(inside[~inside].index)].head()
    assert (a["weekday"] != 6).all()


def test_status_and_time_sanity(loaded):
    a = _frame(loaded, "SELECT * FROM appointments")
    for col in ("appt_start", "appt_end", "booked_at", "canceled_at"):
        a[col] = pd.to_datetime(a[col], utc=True)
    end_of_today = pd.Timestamp(dt.datetime(2026, 4, 2, 22, 0), tz="UTC")
    canceled = a["status"] == "canceled"
    assert a.loc[canceled, "canceled_at"].notna().all() and a.loc[~canceled, "canceled_at"].isna().all()
    assert (a.loc[canceled, "canceled_at"] <= a.loc[canceled, "appt_start"]).all()
    assert (a.loc[canceled, "canceled_at"] >= a.loc[canceled, "booked_at"]).all()
    assert (a["booked_at"] <= a["appt_start"]).all()
    past = a["appt_start"] < end_of_today
    assert set(a.loc[past, "status"]) <= {"completed", "no_show", "canceled"}
    assert set(a.loc[~past, "status"]) <= {"booked", "canceled"}
    assert (a["booked_at"] < end_of_today).all()
    pay = _frame(loaded, """SELECT p.paid_at, a.appt_end, a.status, p.amount_cents, a.price_estimate_cents
                             FROM payments p JOIN appointments a USING (appointment_id)""")
    assert (pay["status"] == "completed").all()
    assert (pd.to_datetime(pay["paid_at"], utc=True) >= pd.to_datetime(pay["appt_end"], utc=True)).all()
    assert (pd.to_datetime(pay["paid_at"], utc=True) < end_of_today).all()
    pts = _frame(loaded, """SELECT p.patient_id, p.created_at, MIN(a.booked_at) AS first_booked
                             FROM patients p JOIN appointments a USING (patient_id) GROUP BY p.patient_id, p.created_at""")
    assert (pd.to_datetime(pts["created_at"], utc=True) < pd.to_datetime(pts["first_booked"], utc=True)).all()
    # the first visit of a patient is the earliest appointment of that patient
    first = _frame(loaded, """SELECT a.patient_id FROM appointments a WHERE a.is_first_visit = 1 AND EXISTS (
                               SELECT 1 FROM appointments b WHERE b.patient_id = a.patient_id
                               AND b.appt_start < a.appt_start AND b.is_first_visit = 0)""")
    assert first.empty


# --- the drops -------------------------------------------------------------------------------------

def test_drop_holds_the_day_and_the_bookings_made_that_day(demo):
    data, _ = demo
    day = dt.date(2026, 3, 27)  # a Friday
    full = read_csv_text(data / "raw_today" / "appointments.csv")
    drop = read_csv_text(data / "daily" / day.isoformat() / "appointments.csv")
    local_day = full["appt_start"].str[:10]
    booked_day = full["booked_at"].str[:10]
    on_day = set(full.loc[local_day == day.isoformat(), "appointment_id"])
    booked_on_day_future = set(full.loc[(booked_day == day.isoformat()) & (local_day > day.isoformat()),
                                        "appointment_id"])
    assert on_day and booked_on_day_future
    ids = set(drop["appointment_id"])
    assert on_day | booked_on_day_future <= ids
    # final statuses for the day, future ones as known at the end of the day
    assert set(drop.loc[drop["appt_start"].str[:10] == day.isoformat(), "status"]) <= {"completed", "no_show", "canceled"}
    future = drop[drop["appt_start"].str[:10] > day.isoformat()]
    assert set(future["status"]) <= {"booked", "canceled"}
    assert (future.loc[future["status"] == "canceled", "canceled_at"].str[:10] <= day.isoformat()).all()
    # every patient referenced is in the drop
    pats = read_csv_text(data / "daily" / day.isoformat() / "patients.csv")
    assert set(drop["patient_id"]) <= set(pats["patient_id"])


def test_drop_for_today_has_final_outcomes_and_tomorrows_list(demo):
    data, _ = demo
    drop = read_csv_text(data / "daily" / TODAY.isoformat() / "appointments.csv")
    today = drop[drop["appt_start"].str[:10] == TODAY.isoformat()]
    assert len(today) and not (today["status"] == "booked").any()
    tomorrow = (TODAY + dt.timedelta(days=1)).isoformat()  # Good Friday 2026-04-03: closed
    after = (TODAY + dt.timedelta(days=5)).isoformat()     # Easter Tuesday
    full = read_csv_text(data / "raw_today" / "appointments.csv")
    assert not (full["appt_start"].str[:10] == tomorrow).any()
    booked_next = full[(full["appt_start"].str[:10] == after) & (full["status"] == "booked")]
    assert len(booked_next) > 5


def test_tomorrows_list_is_not_empty_on_a_normal_day(tmp_path):
    today = dt.date(2026, 11, 25)  # Wednesday
    generate_demo(tmp_path, seed=2, today=today, physios=2, patients=100, days_history=60, days_ahead=14,
                  drop_days=1)
    drop = read_csv_text(tmp_path / "daily" / today.isoformat() / "appointments.csv")
    raw = read_csv_text(tmp_path / "raw" / "appointments.csv")
    both = pd.concat([raw, drop]).drop_duplicates("appointment_id", keep="last")
    tomorrow = both[(both["appt_start"].str[:10] == "2026-11-26") & (both["status"] == "booked")]
    assert len(tomorrow) >= 5


# --- the planted effects ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def medium():
    """2 physios x 365 days: the whole simulated world (final outcomes), past appointments only."""
    from zoneinfo import ZoneInfo
    today = dt.date(2026, 11, 25)
    w = build_world(21, today, physios=2, patients=500, days_history=365, days_ahead=14,
                    tz=ZoneInfo("Europe/Berlin"))
    a = w.appts
    a = a[a["start_s"] < pd.Timestamp(today).timestamp()].copy()
    a["lead_days"] = (a["start_s"] - a["booked_s"]) / 86400
    return w, a


def test_rates_in_planted_ranges(medium):
    w, a = medium
    assert len(a) > 3000
    no_show, late, early = ((a["outcome"] == k).mean() for k in (1, 2, 3))
    assert 0.08 <= no_show <= 0.15
    assert 0.035 <= late <= 0.065
    assert 0.07 <= early <= 0.11
    # utilization of rostered time on working days: 70-85 %
    kept = a[a["outcome"] <= 1]
    minutes = ((kept["end_s"] - kept["start_s"]) / 60).sum()
    local = pd.to_datetime(a["start_s"], unit="s", utc=True).dt.tz_convert("Europe/Berlin")
    worked = pd.DataFrame({"physio_id": a["physio_id"], "date": local.dt.date, "wd": local.dt.day_of_week}).drop_duplicates()
    h = w.hours.copy()
    h["m"] = (pd.to_datetime(h["end_time"], format="%H:%M") - pd.to_datetime(h["start_time"], format="%H:%M")).dt.seconds / 60
    rostered = worked.merge(h.groupby(["physio_id", "weekday"])["m"].sum().reset_index(),
                            left_on=["physio_id", "wd"], right_on=["physio_id", "weekday"])["m"].sum()
    assert 0.70 <= minutes / rostered <= 0.88
    p = w.patients
    assert 0.04 <= (p["phone"] == "").mean() <= 0.12
    assert 0.10 <= (p["email"] == "").mean() <= 0.20
    assert 0.45 <= (p["gender"] == "F").mean() <= 0.65
    # payments: ~80 % of completed visits paid the same day, ~5 % never
    done = a[a["outcome"] == 0]
    first_paid = w.payments.groupby("appointment_id")["paid_s"].min().reindex(done["appointment_id"])
    lag = (first_paid.to_numpy() - done["end_s"].to_numpy()) / 3600
    assert 0.74 <= np.mean(lag < 1) <= 0.86
    assert 0.02 <= np.mean(np.isnan(lag)) <= 0.09


def test_lead_time_and_patient_effects(medium):
    w, a = medium
    same_day = a[a["lead_days"] < 0.5]
    long = a[a["lead_days"] >= 15]
    ns_same, ns_long = (same_day["outcome"] == 1).mean(), (long["outcome"] == 1).mean()
    assert len(same_day) > 50 and len(long) > 300
    assert ns_same < 0.06 and ns_long > 0.12 and ns_long > 2.5 * ns_same
    # a patient's past predicts the future: patients with a no-show or late cancel in their first
    # half of appointments miss far more often in the second half
    a = a.sort_values("start_s")
    a["bad"] = a["outcome"].isin([1, 2])
    a["n"] = a.groupby("patient_id").cumcount()
    a["total"] = a.groupby("patient_id")["patient_id"].transform("size")
    early_half = a[a["n"] < a["total"] // 2].groupby("patient_id")["bad"].any()
    late_half = a[(a["n"] >= a["total"] // 2) & (a["total"] >= 6)]
    flagged = late_half["patient_id"].map(early_half).fillna(False).astype(bool)
    rate_flagged, rate_clean = late_half.loc[flagged, "bad"].mean(), late_half.loc[~flagged, "bad"].mean()
    assert rate_flagged > 1.8 * rate_clean


def test_first_visits_are_long_and_more_often_missed(medium):
    w, a = medium
    first = a[a["is_first_visit"] == 1]
    assert len(first) > 100
    assert ((first["end_s"] - first["start_s"]) == 3600).mean() >= 0.9
    assert (first["price_cents"] == 9000).all() and (a.loc[a["is_first_visit"] == 0, "price_cents"] < 9000).all()
    assert (first["outcome"] == 1).mean() > (a.loc[a["is_first_visit"] == 0, "outcome"] == 1).mean()


# --- the evening lists and calls before Clinic Ops --------------------------------------------------

def test_call_history_files(demo):
    data, summary = demo
    lists = read_csv_text(data / "raw" / "call_lists.csv")
    calls = read_csv_text(data / "raw" / "call_outcomes.csv")
    assert list(lists.columns) == ["day", "rank", "appointment_id", "risk_score", "holdout", "built_at"]
    assert list(calls.columns) == ["appointment_id", "outcome", "recorded_at"]
    raw_as_of = (TODAY - dt.timedelta(days=DROP_DAYS)).isoformat()
    # lists of the clinic days up to the day after the raw export, built at 17:00 the day before
    assert lists["day"].max() <= (TODAY - dt.timedelta(days=DROP_DAYS - 1)).isoformat()
    assert lists["built_at"].str[11:19].eq("17:00:00").all() and (lists["built_at"].str[:10] <= raw_as_of).all()
    assert lists.groupby("day")["rank"].apply(lambda r: list(map(int, r)) == list(range(1, len(r) + 1))).all()
    assert lists.groupby("day").size().max() == 10  # CALL_CAPACITY
    assert 0.12 <= (lists["holdout"] == "1").mean() <= 0.28  # 20 % held out
    held = set(lists.loc[lists["holdout"] == "1", "appointment_id"])
    assert held and not held & set(calls["appointment_id"])  # nobody held out was called
    assert set(calls["outcome"]) <= {"confirmed", "reached", "no_answer", "voicemail"}
    assert (calls["recorded_at"].str[:10] <= raw_as_of).all()
    assert summary["call_list_rows"] == len(lists) and summary["calls"] == len(calls)


def test_call_history_is_loaded_consistent_with_the_appointments(demo, loaded):
    data, _ = demo
    lists = read_csv_text(data / "raw" / "call_lists.csv")
    p = _frame(loaded, """SELECT p.day, p.rank, p.appointment_id, p.holdout, p.risk_source, p.priority_reason,
                                 p.built_at, a.local_date, a.booked_at, a.canceled_at, a.status
                            FROM priorities p JOIN appointments a USING (appointment_id)""")
    assert len(p) == len(lists) and (p["day"] == p["local_date"]).all()
    assert (p["booked_at"] < p["built_at"]).all()  # on the list: booked before it was built ...
    canceled = p["canceled_at"].notna()
    assert (p.loc[canceled, "canceled_at"] > p.loc[canceled, "built_at"]).all()  # ... and not canceled by then
    assert set(p["status"]) <= {"completed", "no_show", "canceled"}  # past days: final outcomes
    assert (p.loc[p["holdout"] == 1, "priority_reason"] == "hold out: do not call; imported evening list").all()
    calls = _frame(loaded, "SELECT COUNT(*) AS n FROM call_outcomes")
    assert int(calls["n"].iloc[0]) == len(read_csv_text(data / "raw" / "call_outcomes.csv"))


def test_call_history_loads_on_both_databases(demo, engine, monkeypatch):
    monkeypatch.setenv("CLINIC_TZ", "Europe/Berlin")
    data, summary = demo
    refresh.load_raw(engine, folder=data / "raw")
    counts = _frame(engine, "SELECT (SELECT COUNT(*) FROM priorities) AS lists, "
                            "(SELECT COUNT(*) FROM priorities WHERE holdout = 1) AS held, "
                            "(SELECT COUNT(*) FROM call_outcomes) AS calls")
    assert counts.iloc[0].tolist() == [summary["call_list_rows"], summary["held_out"], summary["calls"]]


@pytest.mark.parametrize("file, line, expected", [
    ("call_outcomes.csv", 3, "call_outcomes.csv line 3 column outcome: expected one of reached, voicemail, "
                             "no_answer, confirmed, rescheduled, canceled (value 'answered')"),
    ("call_lists.csv", 2, "call_lists.csv line 2 column appointment_id: refers to an appointment that is not "
                          "in appointments.csv (value '999999')"),
])
def test_bad_call_history_stops_the_load_and_writes_nothing(demo, tmp_path, engine, file, line, expected):
    import shutil
    data, _ = demo
    raw = tmp_path / "raw"
    shutil.copytree(data / "raw", raw)
    lines = (raw / file).read_text().splitlines()
    fields = lines[line - 1].split(",")
    if file == "call_outcomes.csv":
        fields[1] = "answered"
    else:
        fields[2] = "999999"
    lines[line - 1] = ",".join(fields)
    (raw / file).write_text("\n".join(lines) + "\n")
    with pytest.raises(refresh.DropError) as info:
        refresh.load_raw(engine, folder=raw)
    assert str(info.value) == expected
    counts = _frame(engine, "SELECT (SELECT COUNT(*) FROM appointments) + (SELECT COUNT(*) FROM priorities) "
                            "+ (SELECT COUNT(*) FROM call_outcomes) AS n")
    assert int(counts["n"].iloc[0]) == 0


def test_call_effect_notebook_on_the_demo(loaded, tmp_path):
    import papermill as pm

    from clinic_lib.core.config import PROJECT_ROOT
    out = tmp_path / "call_effect_out.ipynb"
    pm.execute_notebook(str(PROJECT_ROOT / "notebooks" / "call_effect.ipynb"), str(out),
                        parameters={"start": "", "end": "", "bands": "0.5"}, cwd=str(PROJECT_ROOT / "notebooks"),
                        progress_bar=False, kernel_name="python3")
    text = out.read_text()
    assert "This comparison is observational" in text and "Calling changed the failure rate by" in text
    assert "relative risk (called / held out)" in text and "image/png" in text


def _planted_rows(odds_ratio: float, seed: int):
    """A 4x clinic (32 physios, two years) whose lists hold the 40 highest risks of each clinic
    day: the simulated lists as the analysis reads them, and the planted truth."""
    from zoneinfo import ZoneInfo

    from clinic_lib.modeling.call_effect import assign_bands
    today = dt.date(2026, 11, 24)
    w = build_world(seed, today, physios=32, patients=12800, days_history=730, days_ahead=7,
                    tz=ZoneInfo("Europe/Berlin"), calls_until=today, call_capacity=40, call_odds_ratio=odds_ratio)
    c = w.calls
    cuts = (0.35, 0.5, 0.65)
    rows = pd.DataFrame({"band": assign_bands(c["risk"], cuts), "holdout": c["holdout"].astype(bool),
                         "called": c["called"], "reached": c["reached"], "has_outcome": True, "failed": c["failed"]})
    # the planted effect on these appointments: everyone to call vs everyone held out, weighted by
    # band as the Mantel-Haenszel estimators weigh them
    g = pd.DataFrame({"band": rows["band"], "held": rows["holdout"], "p1": c["p_fail_to_call"],
                      "p0": c["p_fail_held_out"]}).groupby("band", observed=True)
    n1 = g["held"].apply(lambda h: (~h).sum())
    n0 = g["held"].sum()
    w_band = n1 * n0 / (n1 + n0)
    truth_rd = float((w_band * (g["p1"].mean() - g["p0"].mean())).sum() / w_band.sum())
    truth_rr = float((w_band * g["p1"].mean()).sum() / (w_band * g["p0"].mean()).sum())
    return rows, truth_rd, truth_rr


def test_the_holdout_recovers_the_planted_call_effect():
    """Odds ratio 0.6 for a reached call: the interval covers the planted effect and excludes none;
    the observational comparison overstates it (who answers differs)."""
    from clinic_lib.modeling.call_effect import holdout_effect, observational_table
    rows, truth_rd, truth_rr = _planted_rows(0.6, seed=3)
    e = holdout_effect(rows)
    assert e.n_held_out > 4000 and e.messages == []
    assert truth_rd < -0.02 and truth_rr < 0.95
    assert e.rd_low <= truth_rd <= e.rd_high and e.rr_low <= truth_rr <= e.rr_high
    assert e.rd_high < 0 and e.rr_high < 1  # the effect is found, not just covered
    observed = observational_table(rows).loc["all bands", "difference"]
    assert observed < 2 * e.risk_difference  # reached vs not reached: more than twice the effect


def test_without_a_planted_effect_the_interval_covers_zero():
    from clinic_lib.modeling.call_effect import holdout_effect
    rows, truth_rd, truth_rr = _planted_rows(1.0, seed=3)
    assert truth_rd == pytest.approx(0, abs=1e-12) and truth_rr == pytest.approx(1)
    e = holdout_effect(rows)
    assert e.rd_low <= 0 <= e.rd_high and e.rr_low <= 1 <= e.rr_high
