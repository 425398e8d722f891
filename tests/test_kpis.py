"""KPIs on a hand-made clinic (tests/kpi_fixture.py explains every row), SQLite and Postgres.

Every expected number is worked out by hand in the comments from the fixture's table.
"""
from __future__ import annotations

import datetime as dt

import pytest

from clinic_lib.core import db
from clinic_lib.core.migrate import migrate
from clinic_lib.dashboard import freshness, kpi_frames, kpis
from clinic_lib.dashboard.view import CARDS, card_value, format_value

import kpi_fixture as fx

S, E = fx.RANGE
AS_OF = fx.AS_OF


def card_text(cards_html: str, key: str) -> str:
    """The value a card shows, from the cards' HTML."""
    import re
    return re.search(r'class="kpi-value[^"]*">([^<]*)</div>', cards_html.split(f'data-kpi="{key}"')[1]).group(1)


@pytest.fixture
def clinic(engine, monkeypatch):
    monkeypatch.setenv("CLINIC_TZ", "Europe/Berlin")
    monkeypatch.setenv("LATE_CANCEL_HOURS", "24")
    fx.load(engine)
    return engine


def test_daily_counts_use_the_local_date_across_dst(clinic):
    d = kpis.daily(clinic, S, E, as_of=AS_OF)
    # 03-28: 201, 203; 03-29: 101 102 103 104 (00:30 local = 03-28 23:30 UTC) 202 204; 03-30: 105 106 107
    assert d["bookings"].to_dict() == {dt.date(2026, 3, 28): 2, dt.date(2026, 3, 29): 6, dt.date(2026, 3, 30): 3}
    assert d.loc[dt.date(2026, 3, 29), "late_cancellations"] == 1  # 103: 23.5 h real < 24 h
    assert d.loc[dt.date(2026, 3, 30), "early_cancellations"] == 1  # 105: 72 h
    # A day with nothing is there with zeros.
    empty = kpis.daily(clinic, "2026-03-25", "2026-03-26", as_of=AS_OF)
    assert list(empty["bookings"]) == [0, 0]


def test_range_all_physios(clinic):
    s = kpis.summary(clinic, S, E, as_of=AS_OF)
    assert s.bookings == 11            # 101-107 + 201-204
    assert s.attended == 6             # 101 102 106 107 201 202
    assert s.no_shows == 2             # 104 203
    assert s.show_rate == pytest.approx(6 / 8)
    assert s.dna_rate == pytest.approx(2 / 8)
    assert (s.cancellations, s.late_cancellations, s.early_cancellations) == (2, 1, 1)  # 103 late, 105 early
    assert s.revenue_estimate_cents == 40000   # 60+80+60+60+70+70
    assert s.paid_cents == 9000                # 60 (101) + 30 (102); 202's payment is after as_of
    # booked minutes 60+45+45+60+60 (physio 1) + 60+60+60+30 (physio 2) = 480;
    # roster: physio 1 Sun 240 + Mon 480, physio 2 Sat 240 + Sun 240 = 1200
    assert s.booked_utilization == pytest.approx(480 / 1200)
    assert s.attended_utilization == pytest.approx((225 + 120) / 1200)
    assert s.new_patients == 4                 # p1 (101), p5 (107), p6 (201), p3 (202); not p2 (visit 100)
    assert s.rebooking_rate == pytest.approx(2 / 6)   # 101 (-> 106) and 201 (-> 207)
    assert s.patient_visit_average == pytest.approx(6 / 4)
    # outstanding as of 04-30: 207 (0-30) 7000; 102 5000 + 106 6000 + 107 6000 + 201 7000 + 202 7000
    # (31-60); 100 5000 (61-90); 108 4500 (90+)
    assert (s.outstanding_visits, s.outstanding_cents) == (8, 47500)


def test_single_kpi_functions_agree(clinic):
    assert kpis.bookings(clinic, S, E, as_of=AS_OF) == 11
    assert kpis.attended(clinic, S, E, as_of=AS_OF) == 6
    assert kpis.no_shows(clinic, S, E, as_of=AS_OF) == 2
    assert kpis.show_rate(clinic, S, E, as_of=AS_OF) == pytest.approx(0.75)
    assert kpis.dna_rate(clinic, S, E, as_of=AS_OF) == pytest.approx(0.25)
    assert kpis.cancellations(clinic, S, E, as_of=AS_OF) == {"total": 2, "late": 1, "early": 1}
    assert kpis.revenue(clinic, S, E, as_of=AS_OF) == {"estimate_cents": 40000, "paid_cents": 9000,
                                                       "unpaid_cents": 31000}
    assert kpis.new_patients(clinic, S, E, as_of=AS_OF) == 4
    assert kpis.rebooking(clinic, S, E, as_of=AS_OF) == {"visits": 6, "rebooked": 2, "rate": pytest.approx(1 / 3)}
    assert kpis.patient_visit_average(clinic, S, E, as_of=AS_OF) == pytest.approx(1.5)
    # 6 visits by p1 (2), p2, p3, p5, p6
    assert kpis.visits_per_patient(clinic, S, E, as_of=AS_OF) == pytest.approx(6 / 5)


def test_per_physio(clinic):
    one = kpis.summary(clinic, S, E, physio_id=1, as_of=AS_OF)
    assert (one.bookings, one.attended, one.no_shows, one.cancellations) == (7, 4, 1, 2)
    assert one.show_rate == pytest.approx(4 / 5)
    assert (one.revenue_estimate_cents, one.paid_cents) == (26000, 9000)
    assert one.booked_utilization == pytest.approx(270 / 720)
    assert one.attended_utilization == pytest.approx(225 / 720)
    assert one.new_patients == 2                    # p1 (101), p5 (107)
    assert one.rebooking_rate == pytest.approx(1 / 4)
    assert one.patient_visit_average == pytest.approx(2.0)
    assert one.outstanding_cents == 4500 + 5000 + 5000 + 6000 + 6000
    two = kpis.summary(clinic, S, E, physio_id=2, as_of=AS_OF)
    assert (two.bookings, two.attended, two.no_shows, two.cancellations) == (4, 2, 1, 0)
    assert two.show_rate == pytest.approx(2 / 3)
    assert (two.revenue_estimate_cents, two.paid_cents) == (14000, 0)
    assert two.booked_utilization == pytest.approx(210 / 480)
    assert two.attended_utilization == pytest.approx(120 / 480)
    assert two.new_patients == 2                    # p6 (201), p3 (202)
    assert two.rebooking_rate == pytest.approx(1 / 2)  # 201 yes; 202 no (205 canceled in window, 206 too late)
    assert two.outstanding_cents == 21000


def test_utilization_table(clinic):
    u = kpis.utilization(clinic, S, E, as_of=AS_OF).set_index("physio_id")
    assert u.loc[1, "full_name"] == "Anna Alt"
    assert u.loc[1, ["rostered_minutes", "booked_minutes", "attended_minutes"]].tolist() == [720, 270, 225]
    assert u.loc[2, ["rostered_minutes", "booked_minutes", "attended_minutes"]].tolist() == [480, 210, 120]
    assert u.loc[1, "booked_utilization"] == pytest.approx(0.375)
    assert u.loc[2, "attended_utilization"] == pytest.approx(0.25)
    assert 3 not in u.index  # Cleo left in February: no roster in March, not on the chart


def test_rostered_minutes_follow_the_roster_of_each_day(clinic):
    # 2026-02-16 .. 03-08: Anna's Mondays 02-16, 02-23, 03-02 (3 x 480) and Sundays 02-22, 03-01,
    # 03-08 (3 x 240); Ben's Saturdays 02-21, 02-28, 03-07 and Sundays (6 x 240); Cleo's Mondays
    # up to 02-28 only: 02-16 and 02-23 (2 x 240), not 03-02
    r = kpis.roster_minutes(clinic, "2026-02-16", "2026-03-08").set_index("physio_id")["rostered_minutes"]
    assert r.to_dict() == {1: 2160, 2: 1440, 3: 480}
    # Monday 03-30 (in S..E): Anna's 480, nothing of Cleo's
    assert kpis.roster_minutes(clinic, "2026-03-30").set_index("physio_id")["rostered_minutes"].to_dict() == {1: 480}
    # her last month: her no-show of 02-23 against her two Mondays
    u = kpis.utilization(clinic, "2026-02-16", "2026-02-28", physio_id=3, as_of=AS_OF).set_index("physio_id")
    assert u.loc[3, ["rostered_minutes", "booked_minutes", "attended_minutes"]].tolist() == [480, 60, 0]


def test_dst_days(clinic):
    # Spring: Sunday 2026-03-29 has 23 hours but the roster counts 240 + 240 minutes as usual.
    s = kpis.summary(clinic, "2026-03-29", as_of=AS_OF)
    assert (s.bookings, s.attended, s.no_shows, s.late_cancellations) == (6, 3, 1, 1)
    assert s.booked_utilization == pytest.approx((60 + 45 + 45 + 60 + 30) / 480)
    assert s.attended_utilization == pytest.approx((60 + 45 + 60) / 480)
    # Autumn: 2026-10-25 has 25 hours; 301 lasts 60 real minutes (02:30 CEST -> 02:30 CET);
    # 302 was canceled 24.5 real hours before (23.5 on the wall clock): early.
    roster = kpis.roster_minutes(clinic, "2026-10-25", physio_id=1)
    assert roster["rostered_minutes"].tolist() == [240]
    u = kpis.utilization(clinic, "2026-10-25", physio_id=1, as_of="2026-10-31")
    assert u["booked_minutes"].tolist() == [60]
    assert kpis.cancellations(clinic, "2026-10-25", as_of="2026-10-31") == {"total": 1, "late": 0, "early": 1}


def test_snapshot_as_of(clinic):
    # As of 03-29 (end = 03-29 22:00 UTC): 107 (booked 03-30) is not yet known.
    s = kpis.summary(clinic, S, E, as_of="2026-03-29")
    assert (s.bookings, s.attended, s.revenue_estimate_cents, s.paid_cents) == (10, 5, 34000, 9000)
    assert s.new_patients == 3  # p1, p3, p6
    out = kpis.outstanding(clinic, "2026-03-29").set_index("bucket")
    # 102 5000 (age 0) + 201 7000 (1) + 202 7000 (0); 100 5000 (55 d); 108 4500 (83 d)
    assert out["visits"].tolist() == [3, 1, 1, 0]
    assert out["outstanding_cents"].tolist() == [19000, 5000, 4500, 0]


def test_outstanding_buckets(clinic):
    out = kpis.outstanding(clinic, AS_OF)
    assert out["bucket"].tolist() == ["0-30", "31-60", "61-90", "90+"]
    assert out["visits"].tolist() == [1, 5, 1, 1]
    assert out["outstanding_cents"].tolist() == [7000, 31000, 5000, 4500]
    by = kpis.outstanding(clinic, AS_OF, by_physio=True)
    assert by.groupby("physio_id")["outstanding_cents"].sum().to_dict() == {1: 26500, 2: 21000}


def test_previous_period_and_risk_buckets(clinic):
    assert kpis.previous_period("2026-03-29") == (dt.date(2026, 3, 22), dt.date(2026, 3, 22))
    assert kpis.previous_period(S, E) == (dt.date(2026, 3, 25), dt.date(2026, 3, 27))
    r = kpis.risk_buckets(clinic, "2026-03-30").set_index("risk_bucket")["appointments"].to_dict()
    # 105 is canceled; 106's latest score is low; 107 has none
    assert r == {"low": 1, "medium": 0, "high": 0, "not scored": 1}


def test_empty_database(engine, monkeypatch):
    monkeypatch.setenv("CLINIC_TZ", "Europe/Berlin")
    s = kpis.summary(engine, S, E, as_of=AS_OF)
    assert (s.bookings, s.show_rate, s.booked_utilization, s.rebooking_rate) == (0, None, None, None)
    assert kpis.utilization(engine, S, E).empty
    assert freshness.freshness(engine)["etl"] is None


def test_bad_range_is_refused(engine):
    with pytest.raises(ValueError, match="before it starts"):
        kpis.daily(engine, "2026-03-30", "2026-03-28")


def explain_range_queries(bind, start, end=None, physio_id=None, as_of=None) -> dict[str, str]:
    """EXPLAIN (QUERY PLAN on SQLite) of the KPIs' range queries: {query name: plan text}."""
    import sqlalchemy as sa

    from clinic_lib.core.config import get_settings
    from clinic_lib.dashboard.kpis import _connect, _daily_sql, _rebooking_sql, scope
    s = scope(start, end, physio_id, as_of)
    late_secs = int(round(get_settings().late_cancel_hours * 3600))
    plans = {}
    with _connect(bind) as conn:
        queries = {"daily": (_daily_sql(conn, s), s.params(late_secs=late_secs)),
                   "rebooking": (_rebooking_sql(conn, s), s.params())}
        for name, (sql, params) in queries.items():
            prefix = "EXPLAIN QUERY PLAN " if db.is_sqlite(conn) else "EXPLAIN "
            rows = conn.execute(sa.text(prefix + sql), params).all()
            plans[name] = "\n".join(str(r[-1]) for r in rows)
    return plans


def test_range_queries_use_the_local_date_index(sqlite_url, monkeypatch):
    monkeypatch.setenv("CLINIC_TZ", "Europe/Berlin")
    engine = db.make_engine(sqlite_url)
    migrate(engine)
    fx.load(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    plans = explain_range_queries(engine, S, E, as_of=AS_OF)
    for name in ("daily", "rebooking"):
        plan = plans[name]
        assert "ix_appointments_local_date" in plan, plan
        assert "SCAN appointments" not in plan.replace("USING INDEX", "")
        assert "SCAN a\n" not in plan + "\n" and "SCAN v\n" not in plan + "\n", plan
    assert "ix_payments_appointment_amount_paid" in plans["daily"], plans["daily"]
    assert "ix_appointments_patient_start" in plans["rebooking"], plans["rebooking"]


# --- the dashboard's pure parts (the browser test covers the page) -------------------------------

def test_dashboard_compute_matches_kpis(clinic):
    import plotly.graph_objects as go

    from clinic_lib.dashboard import page as dashboard
    view = dashboard.compute(clinic, dt.date(2026, 3, 29), dt.date(2026, 3, 29), None, dt.date(2026, 4, 30))
    assert set(view.figures) == {"activity", "show_rate", "revenue", "utilization", "outstanding", "risk"}
    assert all(isinstance(f, go.Figure) for f in view.figures.values())
    s = kpis.summary(clinic, "2026-03-29", as_of=AS_OF)
    assert view.summary == s
    for key, *_ in CARDS:
        assert f'data-kpi="{key}"' in view.cards_html
        assert card_text(view.cards_html, key) == card_value(key, s)
    assert card_value("show_rate", s) == "75.0 %"
    assert card_value("outstanding_cents", s) == "€475.00"
    # The outstanding snapshot is reused on a filter change.
    again = dashboard.compute(clinic, dt.date(2026, 3, 29), dt.date(2026, 3, 29), 2, dt.date(2026, 4, 30),
                              view.outstanding_by_physio)
    assert again.summary.outstanding_cents == 21000 and again.summary.bookings == 2  # 202, 204


def test_dashboard_fetches_the_likely_ranges_ahead(clinic):
    # After the first render the page fetches the per-day sums of likely_window (last month and
    # this one, with their previous periods) in a thread; a range change inside it runs no
    # per-day query and shows the right cards.
    import re

    import sqlalchemy as sa

    from clinic_lib.dashboard import page as dashboard
    as_of = kpis.parse_day(AS_OF)
    assert dashboard.likely_window(as_of) == (dt.date(2026, 1, 1), as_of)
    state = dashboard.State(engine=clinic, physios=[("Anna Alt", 1), ("Ben Bauer", 2)],
                            first_day=dt.date(2026, 3, 28), last_day=dt.date(2026, 3, 31))
    app = dashboard.Dashboard(state, dt.date(2026, 3, 29), dt.date(2026, 3, 29), None, as_of)
    app.refresh()
    first_window = (app._frames.start, app._frames.end)
    app.fetch_ahead()
    app._ahead[1].result()  # the owner is still reading the first page
    # While a fetch is still running, a change the cached window already holds does not wait.
    import threading
    from concurrent.futures import Future
    fetched, running = app._ahead, Future()
    app._ahead = (fetched[0], running)
    change = threading.Thread(target=lambda: setattr(app.physio, "value", 1))
    change.start()
    change.join(timeout=20)
    assert not change.is_alive(), "a physio change waited for the fetch ahead"
    running.set_result(None)
    app._ahead = fetched
    app.physio.value = dashboard.ALL
    statements = []
    sa.event.listen(clinic, "before_cursor_execute", lambda conn, cur, sql, *rest: statements.append(sql))
    app._busy = True  # set the range's two ends without a refresh in between
    app.mode.value = "Date range"
    app.start.value, app.end.value = dt.date(2026, 3, 2), dt.date(2026, 3, 31)
    app._busy = False
    app.refresh()
    per_day = [q for q in statements if re.search(r"GROUP BY \w+\.local_date, \w+\.physio_id", q)]
    assert not per_day, per_day
    assert first_window[0] > dt.date(2026, 3, 2) - dt.timedelta(days=30)  # so the change needed more days
    assert (app._frames.start, app._frames.end) == (dt.date(2026, 1, 1), as_of)
    s = kpis.summary(clinic, "2026-03-02", "2026-03-31", as_of=AS_OF)
    assert s.bookings == 12  # the 11 of 03-28 .. 03-30 (test_range_all_physios) and 207 on 03-31
    for key, *_ in CARDS:
        assert card_text(app.cards.value, key) == card_value(key, s), key


def test_preheated_work_is_used_only_while_the_data_is_unchanged(clinic, db_url, monkeypatch):
    # Voila's preheated kernel runs prepare() before the page is asked for (clinic dashboard's
    # default). Its outstanding snapshot is reused while the data fingerprint is the same; any
    # refresh in between (an etl_runs row) makes the page compute afresh: no stale numbers.
    import dataclasses

    from clinic_lib.core.config import get_settings
    from clinic_lib.core.timeutil import today_local
    from clinic_lib.dashboard import page as dashboard
    from clinic_lib.ingest.refresh import log_etl_run
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("VOILA_PREHEAT", "True")
    warm = dashboard.prepare()
    today = today_local(get_settings().clinic_tz)
    assert warm is not None and warm.as_of == today
    assert warm.frames.start <= dashboard.likely_window(today)[0] and warm.frames.end >= today
    marked = warm.outstanding_by_physio.assign(outstanding_cents=warm.outstanding_by_physio["outstanding_cents"] * 1000)
    marked_warm = dataclasses.replace(warm, outstanding_by_physio=marked)
    true = kpis.summary(clinic, "2026-03-29", as_of=today)
    assert true.outstanding_cents > 0

    def card(page, key):
        cards = next(c.value for c in page.children if 'data-kpi=' in getattr(c, "value", ""))
        return card_text(cards, key)
    reused = dashboard.build(day="2026-03-29", query_string="", warm=marked_warm)
    assert card(reused, "outstanding_cents") == format_value("money", true.outstanding_cents * 1000)
    assert card(reused, "bookings") == card_value("bookings", true)
    log_etl_run(clinic, "refresh", "2026-03-31", "2026-03-31T20:00:00+00:00", "ok", 1, 1)
    fresh = dashboard.build(day="2026-03-29", query_string="", warm=marked_warm)
    assert card(fresh, "outstanding_cents") == card_value("outstanding_cents", true)


def test_dashboard_errors_become_messages():
    from clinic_lib.dashboard import page as dashboard
    broken = db.make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")  # nothing listens there
    view = dashboard.compute(broken, dt.date(2026, 3, 29), dt.date(2026, 3, 29), None, dt.date(2026, 4, 30))
    assert "could not be shown" in view.cards_html
    assert all(isinstance(f, str) and "could not be shown" in f for f in view.figures.values())


def test_dashboard_url_parameters():
    from clinic_lib.dashboard import page as dashboard
    state = dashboard.State(physios=[("Anna Alt", 1)], first_day=dt.date(2026, 1, 1), last_day=dt.date(2026, 3, 30))
    today = dt.date(2026, 4, 1)
    sel = dashboard.initial_selection(dashboard.query_params("day=2026-03-29"), state, today)
    assert sel[:4] == (dt.date(2026, 3, 29), dt.date(2026, 3, 29), None, today)
    sel = dashboard.initial_selection(dashboard.query_params("?start=2026-03-01&end=2026-03-15&physio=1&as_of=2026-03-31"),
                                      state, today)
    assert sel[:4] == (dt.date(2026, 3, 1), dt.date(2026, 3, 15), 1, dt.date(2026, 3, 31))
    # Bad values are ignored with a note, never an error; the default is yesterday or the last day with data.
    start, end, physio, as_of, note = dashboard.initial_selection(
        dashboard.query_params("day=2026-02-30&physio=9"), state, today)
    assert (start, end, physio) == (dt.date(2026, 3, 30), dt.date(2026, 3, 30), None)
    assert "Ignored the URL's date" in note and "No physio 9" in note


def test_dashboard_missing_database_message(tmp_path, monkeypatch):
    from clinic_lib.dashboard import page as dashboard
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'none' / 'clinic.db'}")
    state = dashboard.load_state()
    assert state.engine is None and "No database yet" in state.message
    assert not (tmp_path / "none").exists()


def test_summary_from_window_sums_equals_summary(clinic):
    # One window of per-(day, physio) sums gives the same KPIs as the direct queries for every
    # sub-range and physio (what a dashboard filter change relies on).
    fr = kpi_frames.frames(clinic, "2026-03-20", "2026-04-12", AS_OF)
    for start, end in [(S, E), ("2026-03-29", "2026-03-29"), ("2026-03-20", "2026-04-12"), ("2026-03-31", "2026-03-31")]:
        roster = kpis.roster_minutes(clinic, start, end)
        for physio in (None, 1, 2):
            assert kpi_frames.summary_from(fr, roster, start, end, physio) == kpis.summary(
                clinic, start, end, physio, AS_OF, with_outstanding=False), (start, end, physio)
            direct = kpis.utilization(clinic, start, end, physio, AS_OF)
            from_fr = kpi_frames.utilization_from(fr, roster, start, end, physio)
            assert direct.drop(columns="full_name").fillna(0).values.tolist() == \
                from_fr.drop(columns="full_name").fillna(0).values.tolist()
        assert kpi_frames.daily_from(fr, start, end).equals(kpis.daily(clinic, start, end, as_of=AS_OF))


def test_frames_grown_by_the_missing_days_equal_one_window(clinic):
    # A dashboard range change queries only the days its cached window lacks; the joined window
    # must hold exactly what one query over the whole window gives.
    import pandas as pd
    whole = kpi_frames.frames(clinic, "2026-03-20", "2026-04-12", AS_OF)
    part = kpi_frames.frames(clinic, "2026-03-29", "2026-03-30", AS_OF)
    assert kpi_frames.frames_covering(clinic, part, "2026-03-30", "2026-03-30", AS_OF) is part
    grown = kpi_frames.frames_covering(clinic, part, "2026-03-20", "2026-04-12", AS_OF)
    assert (grown.start, grown.end) == (whole.start, whole.end)
    assert len(part.daily) < len(whole.daily)  # the fixture has days on both sides of the part
    for name in ("daily", "new", "rebook"):
        def rows(fr):
            return getattr(fr, name).sort_values(["local_date", "physio_id"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(rows(grown), rows(whole), check_dtype=False)
    roster = kpis.roster_minutes(clinic, S, E)
    assert kpi_frames.summary_from(grown, roster, S, E) == kpis.summary(clinic, S, E, None, AS_OF, with_outstanding=False)
    # A window apart from the cached one is queried on its own (not the gap between them), and a
    # different as-of day never reuses the cache.
    apart = kpi_frames.frames_covering(clinic, part, "2026-04-10", "2026-04-12", AS_OF)
    assert (apart.start, apart.end) == (dt.date(2026, 4, 10), dt.date(2026, 4, 12))
    next_day = kpis.parse_day(AS_OF) + dt.timedelta(days=1)
    later = kpi_frames.frames_covering(clinic, part, "2026-03-29", "2026-03-30", next_day)
    assert later is not part and later.as_of == next_day


def test_dashboard_empty_database_message(engine, db_url, monkeypatch):
    from clinic_lib.dashboard import page as dashboard
    monkeypatch.setenv("DATABASE_URL", db_url)
    state = dashboard.load_state()
    assert state.engine is not None and state.first_day is None
    assert "no appointments yet" in state.message
    widget = dashboard.build()  # a message widget, not an exception
    assert "no appointments yet" in widget.value and "Freshness" in widget.value
