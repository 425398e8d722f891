"""The dashboard's pieces without a browser: escaping of URL text, what the cards say, the
freshness box, the note for days outside the data, the Voila command line and the visitor gate.
tests/test_dashboard_browser.py checks the same on the page in Chromium."""
from __future__ import annotations

import datetime as dt
import re

import pandas as pd
import pytest

from clinic_lib.dashboard import freshness, kpis
from clinic_lib.dashboard import page as dashboard
from clinic_lib.dashboard.view import card_value, cards_html
from clinic_lib.ingest.refresh import log_etl_run

import kpi_fixture as fx

PAYLOAD = '<img src=x onerror="alert(1)">'


def _state():
    return dashboard.State(physios=[("Anna Alt", 1)], first_day=dt.date(2026, 1, 5), last_day=dt.date(2026, 10, 25))


@pytest.mark.parametrize("query", [f"day={PAYLOAD}", f"as_of={PAYLOAD}", f"physio={PAYLOAD}",
                                   f"start={PAYLOAD}", f"start=2026-03-01&end={PAYLOAD}"])
def test_url_text_reaches_the_page_escaped(query):
    from urllib.parse import quote
    params = dashboard.query_params("&".join(f"{k}={quote(v)}" for k, v in (p.split("=", 1) for p in query.split("&"))))
    *_, note = dashboard.initial_selection(params, _state(), dt.date(2026, 4, 1))
    assert "<img" in note  # the note quotes what was ignored, as text
    shown = dashboard.note_html(note)
    assert "<img" not in shown and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in shown


def test_coverage_note_says_where_the_data_ends():
    first, last = dt.date(2026, 1, 5), dt.date(2026, 10, 25)
    far = dt.date(2099, 1, 1)
    assert dashboard.coverage_note(far, far, first, last) == (
        "No appointments for 2099-01-01: the data covers 2026-01-05 to 2026-10-25.")
    assert "ends on 2026-10-25" in dashboard.coverage_note(dt.date(2026, 10, 20), dt.date(2026, 11, 3), first, last)
    assert "starts on 2026-01-05" in dashboard.coverage_note(dt.date(2025, 12, 20), dt.date(2026, 1, 10), first, last)
    assert dashboard.coverage_note(dt.date(2026, 3, 1), dt.date(2026, 3, 31), first, last) == ""


def _summary(start, end, **values):
    return kpis.Summary(start=start, end=end, physio_id=None, as_of=end, **values)


def test_patient_visit_average_only_for_a_month_or_more():
    day = dt.date(2026, 3, 29)
    short = _summary(day, day, attended=5, new_patients=2, patient_visit_average=2.5)
    html = cards_html(short, short, "2026-03-22")
    pva = html.split('data-kpi="patient_visit_average"')[1].split('data-kpi=')[0]
    assert ">–</div>" in pva and "shown for ranges of 28 days or more" in pva
    assert card_value("patient_visit_average", short) == "–"
    month = _summary(dt.date(2026, 3, 1), dt.date(2026, 3, 28), attended=30, new_patients=4, patient_visit_average=7.5)
    assert card_value("patient_visit_average", month) == "7.50"
    assert "shown for ranges" not in cards_html(month, None)


def test_bookings_card_says_what_it_counts():
    day = dt.date(2026, 3, 29)
    html = cards_html(_summary(day, day, bookings=6), None)
    bookings = html.split('data-kpi="bookings"')[1].split('data-kpi=')[0]
    assert "appointments scheduled on these days, whatever became of them" in bookings


def test_long_values_get_a_smaller_font():
    day = dt.date(2026, 3, 29)
    for cents, css in ((12_345_678, "kpi-value long"), (1_234_567_890, "kpi-value longer")):
        html = cards_html(_summary(day, day, outstanding_cents=cents, outstanding_visits=900), None)
        outstanding = html.split('data-kpi="outstanding_cents"')[1]
        assert re.search(rf'class="{css}">€{cents // 100:,}.{cents % 100:02d}<', outstanding), outstanding
    assert '<div class="kpi-value">6</div>' in cards_html(_summary(day, day, bookings=6), None)


def test_freshness_shows_the_last_refresh_not_the_jobs_after_it(engine, monkeypatch):
    monkeypatch.setenv("CLINIC_TZ", "Europe/Berlin")
    fx.load(engine)
    log_etl_run(engine, "refresh", "2026-03-29", "2026-03-29T19:00:00+00:00", "ok", 10, 10)
    log_etl_run(engine, "priorities", "2026-03-30", "2026-03-29T19:05:00+00:00", "ok", 4, 4)
    log_etl_run(engine, "reminders", "2026-03-30", "2026-03-29T19:06:00+00:00", "failed", 0, 0, "SMTP down")
    fresh = freshness.freshness(engine)
    assert (fresh["etl"]["job"], str(fresh["etl"]["day"])) == ("refresh", "2026-03-29")
    box = dashboard.freshness_html(fresh).split("<b>Data refresh</b>")[1].split("</div>")[0]
    assert "refresh 2026-03-29: ok" in box and "reminders" not in box and "SMTP" not in box


def test_voila_command_takes_the_settings(monkeypatch):
    monkeypatch.setenv("CLINIC_DASHBOARD_CELL_TIMEOUT", "45")
    cmd = dashboard.voila_command(8899)
    assert "--VoilaExecutor.timeout=45" in cmd
    # a URL cannot switch to another template (the lab template loads from CDNs) or theme
    assert "--VoilaConfiguration.allow_template_override=NO" in cmd
    assert "--VoilaConfiguration.allow_theme_override=NO" in cmd


def test_dashboard_settings_are_checked(monkeypatch):
    from clinic_lib.core.config import ConfigError, get_settings
    for name, bad in (("CLINIC_DASHBOARD_MAX_VISITORS", "0"), ("CLINIC_DASHBOARD_IDLE_MINUTES", "-1"),
                      ("CLINIC_DASHBOARD_CELL_TIMEOUT", "soon")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ConfigError, match=name):
            get_settings()
        monkeypatch.delenv(name)
    monkeypatch.setenv("CLINIC_DASHBOARD_MAX_VISITORS", "2")
    assert get_settings().dashboard_max_visitors == 2


class _Kernels:
    """What VisitorGate.to_end reads of a kernel manager."""

    def __init__(self):
        self.kernels, self._kernel_connections = {}, {}

    def __contains__(self, kernel_id):
        return kernel_id in self.kernels

    def get_kernel(self, kernel_id):
        return self.kernels[kernel_id]


def test_visitor_gate_counts_requests_on_their_way_to_a_kernel():
    import contextvars
    from types import SimpleNamespace

    from clinic_lib.dashboard.server import VisitorGate
    gate = VisitorGate(max_visitors=2, idle_seconds=600, closed_page_seconds=60)

    def request(kernel_id):
        assert gate.admit(alive)
        if kernel_id:
            gate.register(kernel_id)
    alive = ["preheated"]
    contextvars.copy_context().run(request, None)  # admitted, no kernel yet (still starting)
    contextvars.copy_context().run(request, "k1")
    assert gate.in_use(alive + ["k1"]) == 2
    assert not gate.admit(alive + ["k1"])  # a third visitor: busy
    alive = ["preheated"]  # k1 ended (its page closed)
    assert gate.in_use(alive) == 1

    now = dt.datetime(2026, 3, 29, 12, 0, tzinfo=dt.timezone.utc)
    km = _Kernels()
    for kernel_id, idle_s, connections in (("open", 30, 1), ("idle", 601, 1), ("closed", 61, 0), ("fresh", 5, 0)):
        km.kernels[kernel_id] = SimpleNamespace(last_activity=now - dt.timedelta(seconds=idle_s))
        km._kernel_connections[kernel_id] = connections
        gate.kernels.add(kernel_id)
    km.kernels["preheated"] = SimpleNamespace(last_activity=now - dt.timedelta(days=2))  # never a visitor's
    assert sorted(gate.to_end(km, now)) == ["closed", "idle"]


# --- the model in practice ---------------------------------------------------------------------

def test_model_in_practice_per_week(engine, tmp_path, monkeypatch):
    import pytest as _pytest
    monkeypatch.setenv("CLINIC_TZ", "Europe/Berlin")
    monkeypatch.setenv("CLINIC_OUTPUTS_DIR", str(tmp_path / "outputs"))
    fx.load(engine)
    fx.add_model_history(engine, tmp_path / "outputs")
    view = dashboard.model_in_practice(engine, dt.date(2026, 4, 30))
    weekly = view.weekly
    assert [str(w) for w in weekly["week"]] == ["2026-03-23", "2026-03-30"]
    # week of 03-23: 101, 102, 202 attended (0.10, 0.20, 0.40), 103 and 104 failed (0.60, 0.30):
    # 5 of the 6 (failed, attended) pairs ranked right
    first, second = weekly.iloc[0], weekly.iloc[1]
    assert (first["n_outcome"], first["n_failed"]) == (5, 2)
    assert first["roc_auc"] == _pytest.approx(5 / 6)
    assert first["observed_rate"] == _pytest.approx(0.4) and first["mean_risk"] == _pytest.approx(0.32)
    # week of 03-30: 106 (0.05) and 107 (0.20) attended, nothing failed: no AUC
    assert (second["n_outcome"], second["n_failed"]) == (2, 0) and pd.isna(second["roc_auc"])
    assert second["mean_risk"] == _pytest.approx(0.125)
    assert view.holdout_auc == 0.71
    assert view.retrain.startswith("Last retrain: 2026-04-20 (")
    assert view.retrain.endswith("model m1; why: the calibration gap 0.071 is above 0.05.")
    text = dashboard.model_html(view)
    assert "ROC AUC 0.71 (the dashed line)" in text and "(7 in 2 weeks)" in text
    # the four weeks up to 04-30 (04-03 .. 04-30) hold no scored day with outcomes
    assert "The last four weeks (2026-04-03 to 2026-04-30) pooled: no scored appointment with a known" in text
    # up to 04-05 (03-09 .. 04-05) both weeks pool: failed 0.60 and 0.30 against attended 0.10, 0.20,
    # 0.40, 0.05, 0.20: 9 of 10 pairs; 2 of 7 failed (28.6 %) against a mean risk of 1.85 / 7 (26.4 %)
    pooled = dashboard.model_html(dashboard.model_in_practice(engine, dt.date(2026, 4, 5)))
    assert ("The last four weeks (2026-03-09 to 2026-04-05) pooled: ROC AUC 0.90 against the holdout "
            "estimate 0.71; failure rate observed 28.6 % against 26.4 % predicted (7 appointments with an "
            "outcome).") in pooled

    # a model without a recorded reason: the trained date only
    without = {k: v for k, v in fx.MODEL_METRICS.items() if k != "retrain_reason"}
    import json
    (tmp_path / "outputs" / "model" / "metrics.json").write_text(json.dumps(without))
    line = dashboard.model_in_practice(engine, dt.date(2026, 4, 30)).retrain
    assert line.startswith("Last retrain: 2026-04-20 (") and line.endswith("model m1.") and "why" not in line
    # before any scores had outcomes: says so, no charts
    empty = dashboard.model_in_practice(engine, dt.date(2026, 2, 28))
    assert empty.weekly.empty and "has a known outcome yet" in dashboard.model_html(empty)


def test_the_preheated_kernel_brings_the_model_section(engine, db_url, tmp_path, monkeypatch):
    """prepare() computes the section as of today; build() shows it with the first render when the
    data did not change (otherwise a thread fills it after the first render)."""
    from clinic_lib.core.config import get_settings
    from clinic_lib.core.timeutil import today_local
    monkeypatch.setenv("CLINIC_TZ", "Europe/Berlin")
    monkeypatch.setenv("CLINIC_OUTPUTS_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("VOILA_PREHEAT", "True")
    fx.load(engine)
    fx.add_model_history(engine, tmp_path / "outputs")
    warm = dashboard.prepare()
    assert warm.model is not None and warm.model.as_of == today_local(get_settings().clinic_tz)
    page = dashboard.build(day="2026-03-29", query_string="", warm=warm)
    box = next(c for c in page.children if "model-in-practice" in c._dom_classes)
    assert "Model in practice" in box.children[0].value and "Last retrain: 2026-04-20" in box.children[0].value
