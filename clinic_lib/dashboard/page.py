"""The KPI dashboard: the few pieces ``notebooks/kpi_dashboard.ipynb`` composes, and ``serve``.

The notebook is one call, ``build(day)``; Voila renders it with its code hidden
(``clinic dashboard`` / ``make dashboard``: http://127.0.0.1:8866/). Every step catches its own
errors and shows a short message instead of a traceback; a missing or empty database says what
to do. The page loads nothing but its own server: plotly.js comes from the ``jupyterlab-plotly``
extension that Voila serves, and the Voila template ``clinic`` (``clinic_lib/share``) is Voila's
``lab`` template without its CDN links (Font Awesome, mermaid).

Speed: Voila keeps one *preheated* kernel whose notebook has already run ``prepare()``
(imports, today's outstanding snapshot, the per-day sums of ``likely_window``);
``build`` reuses that work when the data fingerprint is unchanged (``CLINIC_DASHBOARD_PREHEAT=0``
turns preheating off; see ``voila_command``). A filter change recomputes from the per-(day,
physio) sums in memory (``kpis.summary_from``); only days outside them are queried, and without
a preheated kernel the page fetches that window in a thread after its first render.

URL parameters: ``?day=YYYY-MM-DD`` (one day), ``?start=..&end=..`` (a range),
``?physio=<id>``, ``?as_of=YYYY-MM-DD`` (snapshot; default today). Whatever a URL holds reaches
the page as text only: every piece of it is escaped where it becomes HTML (``message_html``
takes HTML, so the notes about a URL are plain text escaped by ``note_html``).
"""
from __future__ import annotations

import datetime as dt
import html
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

import sqlalchemy as sa

from clinic_lib.core import db

from clinic_lib.dashboard import kpis
from clinic_lib.core.config import PROJECT_ROOT, get_settings
from clinic_lib.core.timeutil import BadDate, parse_day, today_local

NOTEBOOK = PROJECT_ROOT / "notebooks" / "kpi_dashboard.ipynb"
SHARE_DIR = Path(__file__).resolve().parents[1] / "share"  # holds voila/templates/clinic
ALL = "all"  # the physio filter's "All physios"
TREND_DAYS = 28  # a one-day selection plots the 28 days ending that day
# The patient visit average (attended visits / new patients) estimates visits per course of care;
# over fewer days than a month it mostly counts whoever happened to start then.
PVA_MIN_DAYS = 28

# (key, label, kind, higher_is_better)
CARDS = [
    ("bookings", "Bookings", "count", True),
    ("attended", "Attended", "count", True),
    ("show_rate", "Show rate", "rate", True),
    ("dna_rate", "DNA (no-show) rate", "rate", False),
    ("cancellations", "Cancellations", "count", False),
    ("revenue_estimate_cents", "Revenue estimate", "money", True),
    ("paid_cents", "Paid", "money", True),
    ("booked_utilization", "Utilization (booked)", "rate", True),
    ("attended_utilization", "Utilization (attended)", "rate", True),
    ("new_patients", "New patients", "count", True),
    ("rebooking_rate", "Rebooking rate", "rate", True),
    ("patient_visit_average", "Patient visit average", "ratio", True),
    ("outstanding_cents", "Outstanding (all unpaid)", "money", False),
]
CARD_KINDS = {key: kind for key, _, kind, _ in CARDS}

CSS = """
<style>
.clinic-dash { font-family: var(--jp-ui-font-family, sans-serif); color: #222; }
.clinic-dash h2 { margin: 4px 0 2px 0; font-size: 22px; }
.clinic-dash .dash-sub { color: #666; font-size: 13px; margin-bottom: 6px; }
.kpi-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px; }
.kpi-card { border: 1px solid #ddd; border-radius: 8px; padding: 8px 12px; background: #fff;
            box-shadow: 0 1px 2px rgba(0,0,0,.05); min-width: 0; }
.kpi-label { font-size: 12px; color: #666; text-transform: uppercase; letter-spacing: .03em; }
.kpi-value { font-size: 26px; font-weight: 600; margin: 2px 0; white-space: nowrap; }
.kpi-value.long { font-size: 20px; } .kpi-value.longer { font-size: 16px; }
.kpi-def { font-size: 11px; line-height: 1.3; color: #777; margin-top: 2px; }
.chart-grid { grid-template-columns: repeat(2, minmax(0, 1fr)) !important; }
@media (max-width: 760px) {
  .chart-grid { grid-template-columns: minmax(0, 1fr) !important; }
  .kpi-grid { grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); }
}
.kpi-sub { font-size: 12px; color: #555; }
.kpi-delta { font-size: 12px; }
.kpi-delta.good { color: #2e7d32; } .kpi-delta.bad { color: #c62828; } .kpi-delta.flat { color: #777; }
.dash-message { border-left: 4px solid #f0ad4e; background: #fff8e6; padding: 10px 14px; margin: 8px 0;
                border-radius: 4px; font-size: 14px; }
.dash-message.error { border-color: #d9534f; background: #fdf0f0; }
.fresh-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 10px; }
.fresh-item { border: 1px solid #ddd; border-radius: 8px; padding: 8px 12px; font-size: 13px; }
.fresh-item b { display: block; margin-bottom: 3px; }
.fresh-ok { color: #2e7d32; } .fresh-warn { color: #b26a00; } .fresh-bad { color: #c62828; }
</style>
"""


# --- pure helpers (tested without a browser) ---------------------------------------------------

def query_params(query_string: str | None = None) -> dict[str, str]:
    """The URL's query parameters; Voila gives the kernel the query string as QUERY_STRING."""
    qs = os.environ.get("QUERY_STRING", "") if query_string is None else query_string
    return {k: v[-1] for k, v in parse_qs(qs.lstrip("?")).items() if v}


def format_value(kind: str, value) -> str:
    if value is None:
        return "–"
    if kind == "count":
        return f"{int(value):,}"
    if kind == "rate":
        return f"{value * 100:.1f} %"
    if kind == "money":
        return f"€{value / 100:,.2f}"
    return f"{value:.2f}"


def shows_pva(start: dt.date, end: dt.date) -> bool:
    """Whether the patient visit average means something for this range (a month or more)."""
    return (end - start).days + 1 >= PVA_MIN_DAYS


def card_value(key: str, summary: kpis.Summary) -> str:
    """The text a card shows for a KPI (the browser test compares the page with this)."""
    if key == "patient_visit_average" and not shows_pva(summary.start, summary.end):
        return format_value("ratio", None)
    return format_value(CARD_KINDS[key], getattr(summary, key))


def _value_class(text: str) -> str:
    """Long values (an outstanding total in the hundred thousands) get a smaller font to fit."""
    return "kpi-value" + (" longer" if len(text) > 12 else " long" if len(text) > 9 else "")


# One line under a card's value that says what it counts (kpis.py has the formulas).
DEFINITIONS = {
    "bookings": "appointments scheduled on these days, whatever became of them",
}


def _delta(kind: str, now, before, higher_is_better: bool) -> tuple[str, str]:
    if now is None or before is None:
        return "no comparison", "flat"
    diff = now - before
    if kind == "rate":
        text = f"{diff * 100:+.1f} pp"
    elif kind == "money":
        text = f"{'+' if diff >= 0 else '−'}€{abs(diff) / 100:,.2f}"
    elif kind == "ratio":
        text = f"{diff:+.2f}"
    else:
        text = f"{int(diff):+,}"
        if before:
            text += f" ({diff / before * 100:+.0f} %)"
    tone = "flat" if abs(diff) < 1e-9 else ("good" if (diff > 0) == higher_is_better else "bad")
    return text, tone


def _sub(key: str, s: kpis.Summary) -> str:
    if key == "cancellations":
        return f"late {s.late_cancellations} · early {s.early_cancellations}"
    if key == "paid_cents" and s.revenue_estimate_cents:
        return f"{s.paid_cents / s.revenue_estimate_cents * 100:.0f} % of the estimate"
    if key == "outstanding_cents":
        if s.outstanding_visits is None:
            return "not available"
        return f"{s.outstanding_visits:,} visits, as of {s.as_of}"
    if key == "attended":
        return f"{s.no_shows} no-shows"
    if key == "patient_visit_average" and not shows_pva(s.start, s.end):
        return f"shown for ranges of {PVA_MIN_DAYS} days or more"
    return ""


def cards_html(current: kpis.Summary, previous: kpis.Summary | None, previous_label: str = "") -> str:
    """The KPI cards: value, change against the previous period, a detail line."""
    parts = ['<div class="kpi-grid">']
    for key, label, kind, better in CARDS:
        value = card_value(key, current)
        if key == "patient_visit_average" and not shows_pva(current.start, current.end):
            delta_text, tone = "", "flat"
        elif key == "outstanding_cents" or previous is None:
            delta_text, tone = ("snapshot" if key == "outstanding_cents" else ""), "flat"
        else:
            now, before = getattr(current, key), getattr(previous, key)
            delta_text, tone = _delta(kind, now, before, better)
            if now is not None and before is not None:
                delta_text = f"{delta_text} vs {previous_label}"
            else:
                delta_text = f"none for {previous_label}" if before is None else ""
        parts.append(
            f'<div class="kpi-card" data-kpi="{key}"><div class="kpi-label">{html.escape(label)}</div>'
            f'<div class="{_value_class(value)}">{html.escape(value)}</div>'
            f'<div class="kpi-delta {tone}">{html.escape(delta_text)}</div>'
            f'<div class="kpi-sub">{html.escape(_sub(key, current))}</div>'
            + (f'<div class="kpi-def">{html.escape(DEFINITIONS[key])}</div>' if key in DEFINITIONS else "")
            + '</div>')
    parts.append("</div>")
    return "".join(parts)


def message_html(text: str, error: bool = False) -> str:
    """A message box around ``text``, which is HTML: escape any user text in it (``note_html``)."""
    return f'<div class="dash-message{" error" if error else ""}">{text}</div>'


def note_html(note: str) -> str:
    """A plain-text note (it may quote the URL) as a message box, escaped."""
    return message_html(html.escape(note)) if note else ""


def coverage_note(start: dt.date, end: dt.date, first_day: dt.date | None, last_day: dt.date | None) -> str:
    """What a selection outside the data should say, instead of showing zeros silently."""
    if first_day is None or last_day is None:
        return ""
    span = f"the data covers {first_day} to {last_day}"
    if end < first_day or start > last_day:
        period = str(start) if start == end else f"{start} to {end}"
        return f"No appointments for {period}: {span}."
    if end > last_day:
        return f"The data ends on {last_day}: days after it have no appointments ({span})."
    if start < first_day:
        return f"The data starts on {first_day}: days before it have no appointments ({span})."
    return ""


def _age(days) -> str:
    if days is None:
        return ""
    return "today" if days == 0 else ("1 day ago" if days == 1 else f"{days} days ago")


def freshness_html(fresh: dict, settings=None) -> str:
    """Last refresh, last validation, model and its age, as a row of boxes."""
    settings = settings or get_settings()
    items = []
    etl, ok = fresh.get("etl"), fresh.get("etl_ok")
    if etl is None:
        items.append(("Data refresh", '<span class="fresh-warn">no refresh or load recorded yet</span>'))
    else:
        cls = "fresh-ok" if etl["status"] == "ok" else "fresh-bad"
        text = (f'<span class="{cls}">{html.escape(etl["job"])} {html.escape(str(etl.get("day") or ""))}: '
                f'{html.escape(str(etl["status"]))}</span>, {_age(etl.get("age_days"))}')
        if etl["status"] != "ok" and etl.get("error_message"):
            text += f'<br><small>{html.escape(str(etl["error_message"])[:200])}</small>'
        if ok is not None and ok["run_id"] != etl["run_id"]:
            text += f'<br>last successful: {html.escape(ok["job"])} {html.escape(str(ok.get("day") or ""))}, {_age(ok.get("age_days"))}'
        items.append(("Data refresh", text))
    val = fresh.get("validation")
    if val is None:
        items.append(("Validation", '<span class="fresh-warn">no validation run yet</span>'))
    else:
        cls = {"ok": "fresh-ok", "warnings": "fresh-warn"}.get(val["status"], "fresh-bad")
        items.append(("Validation", f'<span class="{cls}">{html.escape(str(val["status"]))}</span> '
                      f'({html.escape(str(val["scope"]))} {html.escape(str(val.get("day") or ""))}): '
                      f'{int(val["n_errors"])} errors, {int(val["n_warnings"])} warnings, {_age(val.get("age_days"))}'))
    model, metrics = fresh.get("model"), fresh.get("metrics") or {}
    if model is None and not metrics:
        items.append(("Risk model", '<span class="fresh-warn">no model trained yet</span>'))
    else:
        m = dict(metrics)
        if model:
            m = {**{k: model.get(k) for k in ("model_version", "roc_auc", "average_precision", "brier")}, **{
                k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}}
        age = (model or {}).get("age_days")
        cls = "fresh-ok" if age is not None and age <= settings.model_max_age_days else "fresh-warn"
        shown = []
        for key in ("roc_auc", "average_precision", "brier"):
            v = m.get(key)
            if isinstance(v, (int, float)):
                shown.append(f"{key.replace('_', ' ')} {v:.3f}")
        items.append(("Risk model", f'{html.escape(str(m.get("model_version") or ""))} '
                      f'<span class="{cls}">trained {_age(age) or "(age unknown)"}</span>'
                      + (f'<br>{", ".join(shown)}' if shown else "")))
    body = "".join(f'<div class="fresh-item"><b>{t}</b>{v}</div>' for t, v in items)
    return f'<h3>Freshness</h3><div class="fresh-grid" data-panel="freshness">{body}</div>'


# --- state: what the database holds ----------------------------------------------------------

@dataclass
class State:
    """What the dashboard found: an engine and the physios, or a message saying why not."""
    engine: sa.Engine | None = None
    message: str | None = None
    physios: list[tuple[str, int]] = field(default_factory=list)
    first_day: dt.date | None = None
    last_day: dt.date | None = None


def _as_date(value) -> dt.date | None:
    return None if value is None else parse_day(str(value)[:10])


def load_state(settings=None) -> State:
    """Open the configured database; a missing, unreachable or empty one gives a message."""
    settings = settings or get_settings()
    url = settings.database_url
    path = db.sqlite_file(url)
    if path and not path.exists():
        return State(message=f"No database yet at <code>{html.escape(str(path))}</code>. Create the demo "
                             "clinic with <code>make demo</code>, or load your data with "
                             "<code>clinic load</code>, then reload this page.")
    try:
        engine = db.cached_engine(url)
        with engine.connect() as conn:
            if "appointments" not in sa.inspect(conn).get_table_names():
                return State(message="The database has no clinic tables yet. Run <code>clinic migrate</code> "
                                     "and load data (<code>clinic load</code>), then reload this page.")
            first, last = conn.execute(sa.text("SELECT MIN(local_date), MAX(local_date) FROM appointments")).one()
            physios = conn.execute(sa.text("SELECT full_name, physio_id FROM physios ORDER BY full_name")).all()
    except Exception as exc:  # unreachable server, unreadable file ...
        return State(message=f"The database cannot be read ({html.escape(type(exc).__name__)}: "
                             f"{html.escape(str(exc).splitlines()[0][:200])}). Check DATABASE_URL.")
    state = State(engine=engine, physios=[(str(n), int(i)) for n, i in physios],
                  first_day=_as_date(first), last_day=_as_date(last))
    if first is None:
        state.message = ("The database holds no appointments yet. Load data with <code>clinic load</code> "
                         "or apply a daily drop with <code>clinic refresh --day YYYY-MM-DD</code>.")
    return state


def initial_selection(params: dict, state: State, today: dt.date, day=None):
    """(start, end, physio_id, as_of, note) from the URL, the notebook parameter and the data.

    ``note`` is plain text that may quote the URL: show it with ``note_html``."""
    note = ""
    try:
        as_of = parse_day(params["as_of"]) if params.get("as_of") else today
    except BadDate as exc:
        as_of, note = today, f"Ignored as_of: {exc}. "
    start = end = None
    try:
        if params.get("day"):
            start = end = parse_day(params["day"])
        elif params.get("start"):
            start = parse_day(params["start"])
            end = parse_day(params.get("end") or params["start"])
        elif day:
            start = end = parse_day(day)
    except BadDate as exc:
        note += f"Ignored the URL's date: {exc}. "
        start = end = None
    if start is not None and end < start:
        note += "The range ended before it started; showing its first day. "
        end = start
    if start is None:
        start = end = today - dt.timedelta(days=1)  # "how did yesterday go"
        if state.last_day and state.last_day < start:
            start = end = state.last_day
    physio = None
    if params.get("physio"):
        try:
            physio = int(params["physio"])
        except ValueError:
            note += f"Ignored physio={params['physio'][:40]!r}: expected a number. "
        if physio is not None and physio not in {i for _, i in state.physios}:
            note += f"No physio {physio}; showing all. "
            physio = None
    return start, end, physio, as_of, note


# --- the app -------------------------------------------------------------------------------

def _friendly(where: str, exc: BaseException) -> str:
    traceback.print_exc(file=sys.stderr)  # to the Voila log, not the page
    return message_html(f"{html.escape(where)} could not be shown ({html.escape(type(exc).__name__)}: "
                        f"{html.escape(str(exc).splitlines()[0][:200] if str(exc) else '')}). "
                        "The rest of the page is fine.", error=True)


@dataclass
class View:
    """What one selection shows: the cards' HTML and the six figures (or a message each)."""
    cards_html: str
    figures: dict
    outstanding_by_physio: object = None
    summary: kpis.Summary | None = None
    frames: kpis.Frames | None = None
    physios_in_period: set | None = None  # rostered or booked in the range (None: unknown)


def _outstanding_for(frame, physio):
    if physio is not None:
        frame = frame[frame["physio_id"] == physio]
    out = frame.groupby("bucket")[["visits", "outstanding_cents"]].sum()
    return out.reindex(list(kpis.OUTSTANDING_BUCKETS), fill_value=0).reset_index()


def likely_window(as_of: dt.date) -> tuple[dt.date, dt.date]:
    """The days of the selections an owner makes most: any day or range from the first of last
    month up to as_of, with its previous period (last month's is the month before, which may
    start on the last day of the month before that). Fetched ahead, so that such a change runs
    no per-day query."""
    first = as_of.replace(day=1)
    for _ in range(3):
        first = (first - dt.timedelta(days=1)).replace(day=1)
    return first, as_of


def window(start: dt.date, end: dt.date) -> tuple[dt.date, dt.date]:
    """The days one selection needs: the previous period, the trend and the range itself."""
    prev_start, _ = kpis.previous_period(start, end)
    trend_start = start if start != end else end - dt.timedelta(days=TREND_DAYS - 1)
    return min(prev_start, trend_start), end


def compute(engine, start, end, physio, as_of, outstanding_by_physio=None, frames=None) -> View:
    """Every number and figure of one selection (no widgets: the bench times this).

    SQL runs per date window (``kpis.frames``: sums per day and physio) and once per as-of day
    (the outstanding snapshot); pass the previous View's ``frames`` and
    ``outstanding_by_physio`` and a physio filter change runs no query but the roster's and the
    next day's risk buckets."""
    from clinic_lib.dashboard import plots
    figures: dict = {}
    prev_start, prev_end = kpis.previous_period(start, end)
    label = str(prev_start) if prev_start == prev_end else f"{prev_start}–{prev_end}"
    trend_start = start if start != end else end - dt.timedelta(days=TREND_DAYS - 1)
    win_start, win_end = window(start, end)
    current = previous = None
    cards = ""
    out = None
    pending = None
    present = None
    if outstanding_by_physio is None:
        # The one query over the whole history runs on its own connection while the range
        # queries below run here (SQLite and psycopg release the GIL while they work).
        from concurrent.futures import ThreadPoolExecutor
        pool = ThreadPoolExecutor(max_workers=1)
        pending = pool.submit(kpis.outstanding, engine, as_of, None, True)
        pool.shutdown(wait=False)

    def attempt(name, make):
        try:
            figures[name] = make()
        except Exception as exc:
            figures[name] = _friendly(f"The chart '{name}'", exc)

    try:
        frames = kpis.frames_covering(engine, frames, win_start, win_end, as_of)
        roster = kpis.roster_minutes(engine, start, end)
        present = physios_in_period(frames, roster, start, end)
        current = kpis.summary_from(frames, roster, start, end, physio)
        previous = kpis.summary_from(frames, kpis.roster_minutes(engine, prev_start, prev_end),
                                     prev_start, prev_end, physio)
        daily = kpis.daily_from(frames, trend_start, end, physio)
        attempt("activity", lambda: plots.daily_activity(daily))
        attempt("show_rate", lambda: plots.show_rate_trend(daily))
        attempt("revenue", lambda: plots.revenue(daily))
        attempt("utilization", lambda: plots.utilization(kpis.utilization_from(frames, roster, start, end, physio)))
    except Exception as exc:
        frames = None
        cards = _friendly("The KPI cards", exc)
        for name in ("activity", "show_rate", "revenue", "utilization"):
            figures.setdefault(name, _friendly(f"The chart '{name}'", exc))
    tomorrow = as_of + dt.timedelta(days=1)
    attempt("risk", lambda: plots.risk(kpis.risk_buckets(engine, tomorrow, physio), tomorrow))
    try:
        if pending is not None:
            outstanding_by_physio = pending.result()
        out = _outstanding_for(outstanding_by_physio, physio)
    except Exception as exc:
        outstanding_by_physio = None
        figures["outstanding"] = _friendly("The outstanding amounts", exc)
    if out is not None:
        attempt("outstanding", lambda: plots.outstanding(out))
        if current is not None:
            current.outstanding_cents = int(out["outstanding_cents"].sum())
            current.outstanding_visits = int(out["visits"].sum())
    elif current is not None:
        current.outstanding_cents = current.outstanding_visits = None  # shown as "–", not 0
    if current is not None:
        cards = cards_html(current, previous, label)
    order = ("activity", "show_rate", "revenue", "utilization", "outstanding", "risk")
    return View(cards, {k: figures[k] for k in order if k in figures}, outstanding_by_physio, current, frames,
                present)


def physios_in_period(frames: kpis.Frames, roster, start: dt.date, end: dt.date) -> set[int]:
    """The physios the filter offers for a range: rostered on some day of it or booked in it (a
    physio who left is offered for the periods they worked only)."""
    d = frames.daily
    booked = d[(d["local_date"] >= start) & (d["local_date"] <= end) & d["physio_id"].notna() & (d["bookings"] > 0)]
    return {int(p) for p in roster["physio_id"]} | {int(p) for p in booked["physio_id"]}


# --- the model in practice ----------------------------------------------------------------------

MODEL_WEEKS = 12  # the weeks the "Model in practice" section shows, up to the as-of day's


@dataclass
class ModelView:
    """The "Model in practice" section's figures as of ``as_of``: per week, the scored appointments
    with an outcome pooled (``monitoring.weekly_figures``); the last four weeks pooled
    (``monitoring.rolling_figures``, what the retrain rule reads); the holdout estimate of
    metrics.json and the line about the last retrain."""
    as_of: dt.date
    weekly: object  # pandas frame: week, n_outcome, n_failed, mean_risk, observed_rate, roc_auc, model_versions
    holdout_auc: float | None
    retrain: str
    rolling: object = None  # monitoring.RollingFigures


def _metrics_json(settings) -> dict:
    import json
    try:
        metrics = json.loads((Path(settings.model_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def retrain_line(engine, settings, today: dt.date) -> str:
    """When the model in use was last trained, and why when the train step recorded it
    (metrics.json: trained_at, retrain_reason; else the latest model_runs row). Plain text."""
    import pandas as pd

    from clinic_lib.core.timeutil import read_instants
    metrics = _metrics_json(settings)
    trained = metrics.get("trained_at")
    if not trained:
        try:
            with engine.connect() as conn:
                trained = conn.execute(sa.select(db.model_runs.c.trained_at)
                                       .order_by(db.model_runs.c.run_id.desc()).limit(1)).scalar()
        except Exception:
            trained = None
    if not trained:
        return "No model has been trained yet: the chain scores with the heuristic until one is."
    try:
        day = read_instants(pd.Series([trained])).iloc[0].tz_convert(settings.clinic_tz).date()
        when = f"{day} ({_age((today - day).days) or 'in the future'})"
    except Exception:
        when = str(trained)[:10]
    reason = metrics.get("retrain_reason")
    version = metrics.get("model_version")
    text = f"Last retrain: {when}" + (f", model {version}" if version else "")
    return text + (f"; why: {reason}." if reason else ".")


def model_in_practice(engine, as_of: dt.date, settings=None) -> ModelView:
    """The section's figures: the MODEL_WEEKS weeks (Monday to Sunday) up to the week of ``as_of``."""
    from clinic_lib.modeling import monitoring
    settings = settings or get_settings()
    first = as_of - dt.timedelta(days=as_of.weekday()) - dt.timedelta(weeks=MODEL_WEEKS - 1)
    weekly = monitoring.weekly_figures(first, as_of, engine, settings)
    holdout = monitoring.holdout_estimate(settings)
    rolling = monitoring.rolling_figures(as_of, engine, settings, holdout=holdout or {})
    auc = holdout.get("roc_auc") if holdout else None
    return ModelView(as_of, weekly, None if auc is None else float(auc),
                     retrain_line(engine, settings, today_local(settings.clinic_tz)), rolling)


def _rolling_text(view: ModelView) -> str:
    r = view.rolling
    if r is None:
        return ""
    span = f"The last four weeks ({r.start} to {r.end}) pooled"
    if not r.n_outcome:
        return f"{span}: no scored appointment with a known outcome."
    auc = "no ROC AUC (one kind of outcome only)" if r.roc_auc is None else f"ROC AUC {r.roc_auc:.2f}"
    if r.roc_auc is not None and view.holdout_auc is not None:
        auc += f" against the holdout estimate {view.holdout_auc:.2f}"
    return (f"{span}: {auc}; failure rate observed {r.observed_rate * 100:.1f} % against "
            f"{r.mean_risk * 100:.1f} % predicted ({r.n_outcome:,} appointments with an outcome).")


def model_html(view: ModelView) -> str:
    """The section's text: what the charts show, the holdout estimate and the last retrain."""
    weeks = len(view.weekly)
    if weeks:
        n = int(view.weekly["n_outcome"].sum())
        what = (f"The appointments the model scored in the {MODEL_WEEKS} weeks up to {view.as_of} whose "
                f"outcome is known ({n:,} in {weeks} week{'s' if weeks != 1 else ''}), pooled per week: "
                "how well the risk ranked them (ROC AUC: 0.5 is a coin, 1 is perfect; a week with only "
                "one kind of outcome has none) and the share that failed against the risk predicted.")
    else:
        what = (f"No appointment the model scored in the {MODEL_WEEKS} weeks up to {view.as_of} has a "
                "known outcome yet: the figures appear once the chain has scored days and their drops "
                "have come.")
    estimate = (f"Estimate on the model's holdout days: ROC AUC {view.holdout_auc:.2f} (the dashed line)."
                if view.holdout_auc is not None else "No holdout estimate (outputs/model/metrics.json).")
    rolling = _rolling_text(view)
    return (f'<h3>Model in practice</h3><div class="model-text">{html.escape(what)} '
            f'{html.escape(estimate)}'
            + (f'<br><span class="model-rolling">{html.escape(rolling)}</span>' if rolling else "")
            + f'<br><span class="model-retrain">{html.escape(view.retrain)}</span></div>')


PLOTLY_MIMETYPE = "application/vnd.plotly.v1+json"
# No plotly logo, and no "Share chart..." button: the jupyterlab-plotly renderer adds one that
# uploads the chart's data to Chart Studio (plotly's cloud); nothing leaves the clinic's machine.
CHART_CONFIG = {"displaylogo": False, "showSendToCloud": False, "showEditInChartStudio": False,
                "modeBarButtonsToRemove": ["sendDataToCloud", "editInChartStudio"]}


def plotly_bundle(figure_json: str) -> dict:
    """What plotly's ``plotly_mimetype`` renderer displays, built from ``fig.to_json()``.

    Not ``fig.show()``: its renderer module imports nbformat, hence jsonschema, whose format
    checker compiles 38 lark grammars on import (rfc3987_syntax): most of every page's first
    render in a new kernel, far more than the figures themselves."""
    import json
    return {PLOTLY_MIMETYPE: {**json.loads(figure_json), "config": CHART_CONFIG}}


class Dashboard:
    """Widgets, cards, charts and the freshness panel; ``refresh()`` recomputes after a change."""

    def __init__(self, state: State, start, end, physio, as_of, note: str = "", settings=None):
        import ipywidgets as w

        self.w = w
        self.state, self.settings = state, settings or get_settings()
        self.as_of = as_of
        self.renders = 0
        self._drawn: dict[str, str | None] = {}  # what each chart shows now
        self._outstanding = None  # by physio, for as_of: computed once
        self._frames = None  # per (day, physio) sums of the current date window
        self._ahead = None  # a Future: the frames of likely_window(as_of), fetched after the first render
        self._busy = False
        self.mode = w.ToggleButtons(options=["Day", "Date range"], value="Day" if start == end else "Date range",
                                    description="Show", style={"button_width": "90px"})
        self.start = w.DatePicker(value=start, description="Day" if start == end else "From")
        self.end = w.DatePicker(value=end, description="To")
        self.physio = w.Dropdown(options=[("All physios", ALL)] + state.physios,
                                 value=ALL if physio is None else physio, description="Physio")
        for widget, cls in ((self.mode, "mode-filter"), (self.start, "start-filter"),
                            (self.end, "end-filter"), (self.physio, "physio-filter")):
            widget.add_class(cls)
        self.end.layout.display = "none" if start == end else None
        self.status = w.HTML()
        self.note = w.HTML(note_html(note))
        self.coverage = w.HTML()  # says where the data ends when the selection is outside it
        self.cards = w.HTML()
        self.charts = {name: w.Output(layout=w.Layout(min_height="300px", border="1px solid #eee"))
                       for name in ("activity", "show_rate", "revenue", "utilization", "outstanding", "risk")}
        for name, out in self.charts.items():
            out.add_class(f"chart-{name}")
        self.freshness = w.HTML()
        # the model in practice: text and two charts, filled once per page (they do not depend on
        # the filters), in the background when the preheated kernel has not computed them
        self.model_text = w.HTML(f'<h3>Model in practice</h3><div class="model-text">Loading…</div>')
        self.model_charts = {name: w.Output(layout=w.Layout(min_height="300px", border="1px solid #eee"))
                             for name in ("model_auc", "model_rates")}
        for name, out in self.model_charts.items():
            out.add_class(f"chart-{name}")
        model_grid = w.GridBox(list(self.model_charts.values()), layout=w.Layout(grid_gap="10px"))
        model_grid.add_class("chart-grid")
        self.model_box = w.VBox([self.model_text, model_grid])
        self.model_box.add_class("model-in-practice")
        header = w.HTML(f'{CSS}<div class="clinic-dash"><h2>{html.escape(self.settings.clinic_name)}</h2>'
                        f'<div class="dash-sub">KPIs as of {as_of} · data from {state.first_day} to '
                        f'{state.last_day}</div></div>')
        # two columns of charts, one on a phone (CSS: .chart-grid)
        grid = w.GridBox(list(self.charts.values()), layout=w.Layout(grid_gap="10px"))
        grid.add_class("chart-grid")
        self.root = w.VBox([header, w.HBox([self.mode, self.start, self.end, self.physio],
                                           layout=w.Layout(flex_flow="row wrap")),
                            self.status, self.note, self.coverage, self.cards, grid, self.model_box,
                            self.freshness])
        self.root.add_class("clinic-dash")
        self.mode.observe(self._on_mode, "value")
        for widget in (self.start, self.end, self.physio):
            widget.observe(lambda change: self.refresh(), "value")

    # -- events
    def _on_mode(self, change):
        single = change["new"] == "Day"
        self.end.layout.display = "none" if single else None
        self.start.description = "Day" if single else "From"
        if single and self.end.value != self.start.value:
            self._busy = True  # one refresh below, not one per widget change
            try:
                self.end.value = self.start.value
            finally:
                self._busy = False
        self.refresh()

    def selection(self):
        start = self.start.value
        end = start if self.mode.value == "Day" else (self.end.value or start)
        if start is None:
            raise ValueError("choose a day")
        if end < start:
            raise ValueError(f"the range ends ({end}) before it starts ({start})")
        return start, end, None if self.physio.value == ALL else self.physio.value

    # -- rendering
    def _set_status(self, state: str, text: str):
        self.status.value = (f'<div class="dash-status" data-state="{state}" data-render="{self.renders}" '
                             f'style="color:#666;font-size:12px">{html.escape(text)}</div>')

    def _show(self, name: str, fig):
        # A chart the change does not touch (tomorrow's risk on a range change, say) stays as it is
        # drawn: redrawing six plotly charts is most of what a filter change costs in the browser.
        try:
            content = fig if isinstance(fig, str) else fig.to_json()
        except Exception:
            content = None
        if content is not None and self._drawn.get(name) == content:
            return
        self._drawn[name] = content
        out = self.charts[name]
        out.clear_output(wait=True)
        with out:
            from IPython.display import HTML, display
            try:
                if isinstance(fig, str):
                    display(HTML(fig))
                else:
                    display(plotly_bundle(content), raw=True)
            except Exception as exc:
                display(HTML(_friendly(f"The chart '{name}'", exc)))

    def refresh(self):
        if self._busy:
            return
        self._busy = True
        t0 = time.perf_counter()
        self.renders += 1
        self._set_status("busy", "Updating…")
        try:
            try:
                start, end, physio = self.selection()
            except ValueError as exc:
                self.cards.value = message_html(html.escape(str(exc)))
                return
            self.coverage.value = note_html(coverage_note(start, end, self.state.first_day, self.state.last_day))
            view = compute(self.state.engine, start, end, physio, self.as_of, self._outstanding,
                           self._frames_for(*window(start, end)))
            self._outstanding, self._frames = view.outstanding_by_physio, view.frames
            self._offer_physios(view.physios_in_period)
            self.cards.value = view.cards_html
            for name, fig in view.figures.items():
                self._show(name, fig)
        except Exception as exc:
            self.cards.value = _friendly("The dashboard", exc)
        finally:
            self._busy = False
            self._set_status("ready", f"Updated in {time.perf_counter() - t0:.2f} s")

    def _offer_physios(self, present: set | None) -> None:
        """The physio filter lists the physios of the range (and the one chosen, whatever it is)."""
        if present is None:
            return
        chosen = self.physio.value
        options = [("All physios", ALL)] + [(n, i) for n, i in self.state.physios if i in present or i == chosen]
        if list(self.physio.options) != options:
            self.physio.options = options  # inside refresh(): the observers see _busy and return
            self.physio.value = chosen

    def fetch_ahead(self):
        """Fetch the frames of likely_window in a thread while the owner reads the first page
        (the databases work outside the GIL); a later range change inside it queries nothing."""
        ahead = likely_window(self.as_of)
        have = self._frames
        if have is not None and have.covers(*ahead, self.as_of):
            return
        from concurrent.futures import ThreadPoolExecutor
        pool = ThreadPoolExecutor(max_workers=1)
        self._ahead = (ahead, pool.submit(kpis.frames_covering, self.state.engine, have, *ahead, self.as_of))
        pool.shutdown(wait=False)

    def _frames_for(self, start, end):
        """The cached frames, or the ones fetched ahead: when they are ready, or when this window
        needs days the cached ones lack and the fetch holds them (a physio change never waits)."""
        have = self._frames
        covered = have is not None and have.covers(start, end, self.as_of)
        if self._ahead is not None:
            (a_start, a_end), future = self._ahead
            if future.done() or (not covered and a_start <= start and end <= a_end):
                self._ahead = None
                try:
                    fetched = future.result()
                    if have is None or fetched.covers(have.start, have.end, have.as_of):
                        return fetched
                except Exception:
                    pass  # fetched ahead only to save time: the refresh queries what it needs
        return self._frames

    def show_model(self, view: ModelView):
        """Fill the "Model in practice" section. Safe from another thread: it sets widget state
        only (an Output's ``outputs``, not a ``with out:`` block, which captures per thread)."""
        self.model_text.value = model_html(view)
        from clinic_lib.dashboard import plots
        figures = {}
        if len(view.weekly):
            figures = {"model_auc": lambda: plots.model_auc(view.weekly, view.holdout_auc),
                       "model_rates": lambda: plots.model_rates(view.weekly)}
        for name, out in self.model_charts.items():
            out.layout.display = None if name in figures else "none"
            if name not in figures:
                continue
            try:
                bundle = plotly_bundle(figures[name]().to_json())
                out.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)
            except Exception as exc:
                out.outputs = ({"output_type": "display_data", "metadata": {},
                                "data": {"text/html": _friendly(f"The chart '{name}'", exc)}},)

    def fetch_model(self):
        """Compute the model section in a thread after the first render (a 20x clinic's twelve
        weeks of scores take about a second) and fill it when done."""
        import threading

        def work():
            try:
                self.show_model(model_in_practice(self.state.engine, self.as_of, self.settings))
            except Exception as exc:
                self.model_text.value = '<h3>Model in practice</h3>' + _friendly("The model's figures", exc)
        threading.Thread(target=work, daemon=True, name="model-in-practice").start()

    def show_freshness(self):
        try:
            self.freshness.value = freshness_html(kpis.freshness(self.state.engine, self.settings), self.settings)
        except Exception as exc:
            self.freshness.value = _friendly("The freshness panel", exc)


@dataclass
class Warm:
    """Request-independent work done ahead (in a preheated kernel): today's outstanding snapshot."""
    as_of: dt.date
    fingerprint: tuple
    outstanding_by_physio: object
    frames: kpis.Frames | None = None  # the default selection's window (no URL parameters)
    model: ModelView | None = None  # the "Model in practice" section as of today


def data_fingerprint(engine) -> tuple:
    """Cheap evidence that the data did not change: every load/refresh logs an etl_runs row;
    payment and appointment counts catch writes made another way."""
    with engine.connect() as conn:
        return tuple(conn.execute(sa.text(
            "SELECT (SELECT MAX(run_id) FROM etl_runs), (SELECT COUNT(*) FROM payments), "
            "(SELECT MAX(payment_id) FROM payments), (SELECT COUNT(*) FROM appointments)")).one())


def prepare() -> Warm | None:
    """Everything a page needs that does not depend on its URL: imports, plotly's first-figure
    cost, the outstanding snapshot as of today and the per-day sums of ``likely_window``. Voila
    runs it before the request arrives (preheated kernels); without preheating it returns None
    and the page does that work itself."""
    try:
        if os.environ.get("VOILA_PREHEAT", "False") == "False":
            return None  # rendering now anyway: build() runs the queries (outstanding in parallel)
        from clinic_lib.dashboard import plots
        plots.warm_up()
        settings = get_settings()
        state = load_state(settings)
        if state.engine is None or state.first_day is None:
            return None
        as_of = today_local(settings.clinic_tz)
        fingerprint = data_fingerprint(state.engine)
        start, end, *_ = initial_selection({}, state, as_of)
        (w_start, w_end), (a_start, a_end) = window(start, end), likely_window(as_of)
        frames = kpis.frames(state.engine, min(w_start, a_start), max(w_end, a_end), as_of)
        try:
            model = model_in_practice(state.engine, as_of, settings)
        except Exception:
            traceback.print_exc(file=sys.stderr)
            model = None  # the page computes it itself
        return Warm(as_of, fingerprint, kpis.outstanding(state.engine, as_of, by_physio=True), frames, model)
    except Exception:
        traceback.print_exc(file=sys.stderr)
        return None


def _voila_request_info(poll: float = 5.0, max_failures: int = 12) -> dict | None:
    """A preheated kernel's wait for its page request: Voila's /voila/query/<kernel> websocket.

    Like ``voila.utils.wait_for_request`` but robust: each wait lasts ``poll`` seconds, then the
    socket is opened again. Voila keeps the request info of a kernel and sends it on every open,
    so a message lost in a race (a page left waiting) arrives with the next open."""
    import asyncio
    import json
    import threading

    import websockets

    protocol = os.getenv("VOILA_WS_PROTOCOL", "ws")
    ip = os.getenv("VOILA_APP_IP", "127.0.0.1")
    port = os.getenv("VOILA_APP_PORT", "8866")
    base = os.getenv("VOILA_WS_BASE_URL", os.getenv("VOILA_SERVER_URL", "/"))
    url = f"{protocol}://{ip}:{port}{base}voila/query/{os.getenv('VOILA_KERNEL_ID', '')}"
    result: dict = {}

    async def once():
        async with websockets.connect(url, open_timeout=5) as ws:
            return await asyncio.wait_for(ws.recv(), timeout=poll)

    def loop():
        failures = 0
        while failures < max_failures:
            try:
                result["info"] = json.loads(asyncio.new_event_loop().run_until_complete(once()))
                return
            except (asyncio.TimeoutError, TimeoutError):
                continue  # no request yet (or a lost message): open again
            except Exception:
                failures += 1
                time.sleep(1)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    thread.join()
    return result.get("info")


def request_query_string() -> str:
    """The page's query string: Voila's preheated kernel waits here for the request."""
    if os.environ.get("VOILA_PREHEAT", "False") != "False":
        try:
            info = _voila_request_info()
            if info:
                for key, value in info.items():
                    os.environ[key] = str(value)
        except Exception:
            traceback.print_exc(file=sys.stderr)
    return os.environ.get("QUERY_STRING", "")


def build(day=None, query_string: str | None = None, warm: Warm | None = None):
    """The whole page as one widget (or a friendly message); never raises."""
    import ipywidgets as w
    try:
        settings = get_settings()
        state = load_state(settings)
        if state.engine is None or state.first_day is None:
            parts = [CSS, message_html(state.message or "No data.")]
            if state.engine is not None:
                try:
                    parts.append(freshness_html(kpis.freshness(state.engine, settings), settings))
                except Exception:
                    pass
            return w.HTML('<div class="clinic-dash">' + "".join(parts) + "</div>")
        today = today_local(settings.clinic_tz)
        start, end, physio, as_of, note = initial_selection(query_params(query_string), state, today, day)
        app = Dashboard(state, start, end, physio, as_of, note, settings)
        model = None
        if warm is not None and warm.as_of == as_of:
            try:
                if data_fingerprint(state.engine) == warm.fingerprint:
                    app._outstanding, app._frames, model = warm.outstanding_by_physio, warm.frames, warm.model
            except Exception:
                pass
        app.refresh()
        app.show_freshness()
        if model is not None:
            app.show_model(model)
        else:
            app.fetch_model()
        app.fetch_ahead()
        return app.root
    except Exception as exc:
        return w.HTML(CSS + _friendly("The dashboard", exc))


# --- serving ------------------------------------------------------------------------------

def voila_command(port: int | None = None, host: str = "127.0.0.1", notebook: Path | None = None) -> list[str]:
    """The Voila command line: our template, no tracebacks, the cell timeout; clinic_lib.dashboard.server
    adds the bound on visitors' kernels and ends the unused ones (docs/dashboard.md)."""
    settings = get_settings()
    port = port or settings.dashboard_port
    # Preheating (on unless CLINIC_DASHBOARD_PREHEAT=0) takes the kernel's start, the imports and
    # the queries that do not depend on the URL out of the page's first render; the waiting
    # kernel holds ~200 MB.
    preheat = os.environ.get("CLINIC_DASHBOARD_PREHEAT", "1").lower() not in ("0", "false", "no", "off")
    return [sys.executable, "-m", "clinic_lib.dashboard.server", str(notebook or NOTEBOOK),
            "--no-browser", f"--port={port}", f"--Voila.ip={host}", "--Voila.port_retries=0",
            "--template=clinic", "--theme=light",
            # a URL cannot pick another template or theme (the lab template loads from CDNs)
            "--VoilaConfiguration.allow_template_override=NO", "--VoilaConfiguration.allow_theme_override=NO",
            "--VoilaConfiguration.show_tracebacks=False", "--VoilaConfiguration.strip_sources=True",
            f"--VoilaExecutor.timeout={int(settings.dashboard_cell_timeout)}",
            # With preheating, one kernel waits with the notebook's request-independent part
            # already run (dashboard.prepare); the page's own part runs when the request arrives.
            f"--VoilaConfiguration.preheat_kernel={preheat}", f"--VoilaConfiguration.default_pool_size={int(preheat)}"]


def voila_env(base: dict | None = None) -> dict:
    """The environment for Voila: our template folder first on JUPYTER_PATH."""
    env = dict(os.environ if base is None else base)
    env["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(SHARE_DIR), env.get("JUPYTER_PATH", "")) if p)
    return env


def serve(port: int | None = None, host: str = "127.0.0.1", notebook: Path | None = None) -> None:
    """Run Voila on the dashboard notebook (replaces this process; Ctrl-C stops it)."""
    port = port or get_settings().dashboard_port
    cmd = voila_command(port, host, notebook)
    print(f"Clinic Ops dashboard on http://{host}:{port}/  (Ctrl-C to stop)", flush=True)
    env = voila_env()
    if host not in ("0.0.0.0", "::", ""):
        env["VOILA_APP_IP"] = host  # where a preheated kernel asks Voila for the page's URL
    os.execve(sys.executable, cmd, env)
