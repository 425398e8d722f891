"""The roster with its history (clinic_lib/core/roster.py): a change holds from its day until the next,
a leaver's roster ends after their last day, and everything that reads the roster (rostered
minutes, utilization, the next clinic day, the roster check, the dashboard's physio filter)
reads the one that held on each day. Drops really refreshed, on SQLite and Postgres."""
from __future__ import annotations

import datetime as dt

import pandas as pd

from clinic_lib.core import db, roster
from clinic_lib.core.clinic_days import next_clinic_day
from clinic_lib.core.roster import Block
from clinic_lib.dashboard import kpis
from clinic_lib.ingest.refresh import load_raw, refresh_day
from clinic_lib.validation.drop import validate_drop

from drops import HOURS, PATIENTS, PHYSIOS, appt, rows, write_drop, write_table

D = dt.date
MON, TUE, WED = (0, "08:00", "12:00"), (1, "08:00", "12:00"), (2, "08:00", "12:00")


def _b(week_block, first, last):
    return Block(*week_block, first, last)


def test_a_change_holds_from_its_day_until_the_next_recorded_one():
    before = [_b(MON, None, None), _b(TUE, None, None)]
    # from Monday 2026-03-02 on: Monday and Wednesday instead of Monday and Tuesday
    changed = roster.roster_from(before, D(2026, 3, 2), [MON, WED])
    assert changed == [_b(MON, None, None), _b(TUE, None, D(2026, 3, 1)), _b(WED, D(2026, 3, 2), None)]
    assert roster.roster_from(changed, D(2026, 3, 2), [MON, WED]) == changed  # the same drop again
    # from 03-16 on back to Monday and Tuesday; then the 03-02 drop applied again keeps that change
    later = roster.roster_from(changed, D(2026, 3, 16), [MON, TUE])
    assert later == [_b(MON, None, None), _b(TUE, None, D(2026, 3, 1)), _b(TUE, D(2026, 3, 16), None),
                     _b(WED, D(2026, 3, 2), D(2026, 3, 15))]
    assert roster.roster_from(later, D(2026, 3, 2), [MON, WED]) == later
    # the physio leaves: Friday 03-20 was the last day
    left = roster.roster_ends_after(later, D(2026, 3, 20))
    assert left == [_b(MON, None, D(2026, 3, 20)), _b(TUE, None, D(2026, 3, 1)), _b(TUE, D(2026, 3, 16), D(2026, 3, 20)),
                    _b(WED, D(2026, 3, 2), D(2026, 3, 15))]
    assert roster.roster_ends_after(left, D(2026, 3, 20)) == left
    assert roster.roster_from(left, D(2026, 3, 2), [MON, WED]) == left  # an older drop again: still gone
    # rostered minutes 03-02 .. 03-22: Mondays 03-02, 03-09, 03-16; Tuesday 03-17; Wednesdays 03-04,
    # 03-11: six mornings of 240 minutes
    assert roster.rostered_minutes({7: left}, D(2026, 3, 2), D(2026, 3, 22)) == {7: 6 * 240}
    assert roster.rostered_minutes({7: left}, D(2026, 3, 23), D(2026, 4, 30)) == {7: 0}


def test_weekday_count():
    assert roster.weekday_count(0, D(2026, 3, 2), D(2026, 3, 2)) == 1  # a Monday
    assert roster.weekday_count(1, D(2026, 3, 2), D(2026, 3, 2)) == 0
    assert roster.weekday_count(6, D(2026, 3, 2), D(2026, 3, 29)) == 4  # Sundays 8, 15, 22, 29
    assert roster.weekday_count(0, D(2026, 3, 3), D(2026, 3, 2)) == 0


# The drops: physios 1 and 2 work Monday to Friday 08-12 and 13-17 from Tuesday 2026-02-10 (the
# first drop names the roster); from Wednesday 02-11 physio 2 works Monday and Wednesday mornings
# only; Thursday 02-12 is physio 1's last day (the drop marks them inactive).
P2_NEW = [{"physio_id": 2, "weekday": 0, "start_time": "08:00", "end_time": "12:00"},
          {"physio_id": 2, "weekday": 2, "start_time": "08:00", "end_time": "12:00"}]
GONE_1 = [{**PHYSIOS[0], "active": 0}, PHYSIOS[1]]


def _drops(data):
    write_drop(data / "daily" / "2026-02-10", [appt(1, "2026-02-10T09:00:00+01:00", "2026-02-10T10:00:00+01:00")],
               hours=HOURS)
    write_drop(data / "daily" / "2026-02-11", [appt(2, "2026-02-11T09:00:00+01:00", "2026-02-11T10:00:00+01:00",
                                                    physio_id=2)], hours=P2_NEW)
    write_drop(data / "daily" / "2026-02-12", [appt(3, "2026-02-12T09:00:00+01:00", "2026-02-12T10:00:00+01:00")],
               physios=GONE_1)


def _minutes(engine, start, end=None):
    frame = kpis.roster_minutes(engine, start, end)
    return dict(zip(frame["physio_id"].astype(int), frame["rostered_minutes"].astype(int)))


def test_drops_fill_the_roster_history(clinic_env, engine):
    data = clinic_env / "data"
    _drops(data)
    for day in ("2026-02-10", "2026-02-11", "2026-02-12"):
        refresh_day(day, engine=engine)
    got = rows(engine, "SELECT physio_id, weekday, start_time, valid_from, valid_to FROM physio_hours "
                       "ORDER BY physio_id, weekday, start_time, valid_from")
    got = [(p, w, s, f and str(f), t and str(t)) for p, w, s, f, t in got]
    assert got == [(1, w, s, "2026-02-10", "2026-02-12") for w in range(5) for s in ("08:00", "13:00")] + [
        (2, 0, "08:00", "2026-02-10", None), (2, 0, "13:00", "2026-02-10", "2026-02-10"),
        (2, 1, "08:00", "2026-02-10", "2026-02-10"), (2, 1, "13:00", "2026-02-10", "2026-02-10"),
        (2, 2, "08:00", "2026-02-10", None), (2, 2, "13:00", "2026-02-10", "2026-02-10"),
        (2, 3, "08:00", "2026-02-10", "2026-02-10"), (2, 3, "13:00", "2026-02-10", "2026-02-10"),
        (2, 4, "08:00", "2026-02-10", "2026-02-10"), (2, 4, "13:00", "2026-02-10", "2026-02-10")]
    # each day reads the roster it had: Tuesday 02-10 both full days; Wednesday 02-11 physio 2's
    # new morning only; the week after, physio 1 is gone and physio 2 has two mornings
    assert _minutes(engine, "2026-02-10") == {1: 480, 2: 480}
    assert _minutes(engine, "2026-02-11") == {1: 480, 2: 240}
    assert _minutes(engine, "2026-02-16", "2026-02-20") == {2: 480}
    util = kpis.utilization(engine, "2026-02-16", "2026-02-20", as_of="2026-02-20")
    assert list(util["physio_id"]) == [2]  # the leaver is not on the chart of a week after leaving
    # the next clinic day after Thursday 02-12 is Monday: on Friday nobody is rostered any more
    assert next_clinic_day(engine, "2026-02-12") == D(2026, 2, 16)
    assert next_clinic_day(engine, "2026-02-10") == D(2026, 2, 11)

    # the drops again, in any order: the same rows
    before = db.content_hash(engine)
    for day in ("2026-02-11", "2026-02-10", "2026-02-12", "2026-02-11"):
        refresh_day(day, engine=engine)
    assert db.content_hash(engine) == before


def test_the_roster_check_reads_the_roster_of_each_day(clinic_env, engine):
    data = clinic_env / "data"
    _drops(data)
    for day in ("2026-02-10", "2026-02-11", "2026-02-12"):
        refresh_day(day, engine=engine)
    # Friday's drop books next week: physio 2 on Wednesday morning (their new roster), on Thursday
    # morning (the old roster only) and physio 1 on Monday (gone)
    write_drop(data / "daily" / "2026-02-13", [
        appt(4, "2026-02-13T09:00:00+01:00", "2026-02-13T10:00:00+01:00", physio_id=2, status="canceled",
             canceled_at="2026-02-12T09:00:00+01:00"),
        appt(5, "2026-02-18T09:00:00+01:00", "2026-02-18T10:00:00+01:00", physio_id=2, status="booked",
             booked_at="2026-02-13T09:00:00+01:00"),
        appt(6, "2026-02-19T09:00:00+01:00", "2026-02-19T10:00:00+01:00", physio_id=2, status="booked",
             booked_at="2026-02-13T09:00:00+01:00"),
        appt(7, "2026-02-16T09:00:00+01:00", "2026-02-16T10:00:00+01:00", physio_id=1, status="booked",
             booked_at="2026-02-13T09:00:00+01:00")], physios=GONE_1)
    report = validate_drop("2026-02-13", engine=engine, record=False)
    assert sorted(e["appointment_id"] for e in report.checks["roster.outside"].examples) == [6, 7]
    # a drop that hands physio 2 Thursday mornings again from this Friday on: 6 fits
    write_table(data / "daily" / "2026-02-13", "physio_hours",
                P2_NEW + [{"physio_id": 2, "weekday": 3, "start_time": "08:00", "end_time": "12:00"}])
    report = validate_drop("2026-02-13", engine=engine, record=False)
    assert sorted(e["appointment_id"] for e in report.checks["roster.outside"].examples) == [7]


def test_the_initial_load_ends_a_leavers_roster_on_their_last_appointment(clinic_env, engine):
    raw = clinic_env / "data" / "raw"
    physios = [{**PHYSIOS[0], "active": 0}, PHYSIOS[1]]
    write_table(raw, "physios", physios)
    write_table(raw, "physio_hours", HOURS)
    write_table(raw, "patients", PATIENTS)
    write_table(raw, "appointments", [appt(1, "2026-02-02T09:00:00+01:00", "2026-02-02T10:00:00+01:00"),
                                      appt(2, "2026-02-05T09:00:00+01:00", "2026-02-05T10:00:00+01:00", physio_id=2)])
    write_table(raw, "payments", [])
    load_raw(engine, folder=raw)
    ends = rows(engine, "SELECT DISTINCT physio_id, valid_from, valid_to FROM physio_hours ORDER BY physio_id")
    assert [(p, f, t and str(t)) for p, f, t in ends] == [(1, None, "2026-02-02"), (2, None, None)]
    assert _minutes(engine, "2026-02-02") == {1: 480, 2: 480}
    assert _minutes(engine, "2026-02-03") == {2: 480}


def test_the_dashboard_offers_a_leaver_only_for_periods_they_worked(clinic_env, engine, monkeypatch):
    from clinic_lib.dashboard import page as dashboard
    data = clinic_env / "data"
    _drops(data)
    for day in ("2026-02-10", "2026-02-11", "2026-02-12"):
        refresh_day(day, engine=engine)
    state = dashboard.load_state()
    names = dict(state.physios)
    as_of = D(2026, 2, 20)
    worked = dashboard.Dashboard(state, D(2026, 2, 9), D(2026, 2, 13), None, as_of)
    worked.refresh()
    assert [label for label, _ in worked.physio.options] == ["All physios", "Anna Berg", "Jonas Keller"]
    worked.start.value, worked.end.value = D(2026, 2, 16), D(2026, 2, 20)  # the week after: Anna left
    worked.mode.value = "Date range"
    assert [label for label, _ in worked.physio.options] == ["All physios", "Jonas Keller"]
    assert "Anna Berg" not in str(worked._drawn["utilization"])
    chosen = dashboard.Dashboard(state, D(2026, 2, 16), D(2026, 2, 20), names["Anna Berg"], as_of)
    chosen.refresh()  # a link that names her: she stays chosen, with no roster that week
    assert chosen.physio.value == names["Anna Berg"]
    assert "Utilization" in chosen.cards.value and "Jonas Keller" in [lb for lb, _ in chosen.physio.options]


def test_rostered_minutes_frame_is_empty_without_roster(engine):
    assert kpis.roster_minutes(engine, "2026-02-10").empty
    assert isinstance(kpis.roster_minutes(engine, "2026-02-10"), pd.DataFrame)


def test_the_demos_leaver_ends_their_roster_in_the_drop_of_their_last_day(tmp_path, monkeypatch):
    """The demo's leaver leaves while the daily drops run: the drop of their last appointment's day
    marks them inactive and the refresh ends their roster there; raw plus every drop equals a raw
    export of the last day, roster history included."""
    from clinic_lib.ingest.demo import generate_demo
    from clinic_lib.ingest.drop_format import read_csv_text
    monkeypatch.setenv("CLINIC_TZ", "Europe/Berlin")
    today = D(2026, 6, 30)
    sizes = dict(seed=5, today=today, physios=5, patients=400, days_history=120, drop_days=45)
    generate_demo(tmp_path / "demo", **sizes)
    first_drop = today - dt.timedelta(days=sizes["drop_days"] - 1)
    # the same world (the calls made up to the first drop), exported once at the end of today
    generate_demo(tmp_path / "as_of_today", raw_as_of=today, raw_dir=tmp_path / "raw_today",
                  calls_until=first_drop - dt.timedelta(days=1), **{**sizes, "drop_days": 0})
    drops = sorted(p.name for p in (tmp_path / "demo" / "daily").iterdir())
    leaver = 5  # with five physios the last one leaves (demo.py)
    marked = [d for d in drops if leaver in set(read_csv_text(tmp_path / "demo" / "daily" / d / "physios.csv")
                                                .query("active == '0'")["physio_id"].astype(int))]
    assert marked, "the leaver should leave while the drops run"
    last_day = marked[0]
    raw_today = read_csv_text(tmp_path / "raw_today" / "appointments.csv")
    assert max(raw_today.loc[raw_today["physio_id"].astype(int) == leaver, "appt_start"].str[:10]) == last_day
    assert read_csv_text(tmp_path / "demo" / "raw" / "physios.csv").set_index("physio_id").loc[str(leaver), "active"] == "1"

    stepwise = db.make_engine(f"sqlite:///{tmp_path / 'stepwise.db'}")
    load_raw(stepwise, folder=tmp_path / "demo" / "raw")
    for day in drops:
        refresh_day(day, engine=stepwise, folder=tmp_path / "demo" / "daily" / day, allow_empty=True)
    at_once = db.make_engine(f"sqlite:///{tmp_path / 'at_once.db'}")
    load_raw(at_once, folder=tmp_path / "raw_today")

    ends = rows(stepwise, "SELECT DISTINCT valid_from, valid_to FROM physio_hours WHERE physio_id = :p", p=leaver)
    assert ends == [(None, last_day)]
    assert rows(stepwise, "SELECT COUNT(*) FROM physio_hours WHERE physio_id <> :p AND valid_to IS NOT NULL",
                p=leaver) == [(0,)]
    assert db.content_hash(stepwise) == db.content_hash(at_once)
    after = (D.fromisoformat(last_day) + dt.timedelta(days=1)).isoformat()
    assert leaver not in set(kpis.roster_minutes(stepwise, after, today)["physio_id"])
    stepwise.dispose()
    at_once.dispose()
