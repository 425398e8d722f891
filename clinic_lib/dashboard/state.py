"""The dashboard's state: what the database holds (days, physios, roster), the selection a URL asks for, the KPI frames of a selection, and the model in practice (monitoring and the last retrain)."""
from __future__ import annotations

import datetime as dt
import html
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from clinic_lib.core import db
from clinic_lib.core.config import get_settings
from clinic_lib.core.timeutil import BadDate, parse_day, today_local
from clinic_lib.dashboard import kpi_frames, kpis
from clinic_lib.dashboard.view import MODEL_WEEKS, TREND_DAYS, ModelView, _age, cards_html, message_html

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
    frames: kpi_frames.Frames | None = None
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

    SQL runs per date window (``kpi_frames.frames``: sums per day and physio) and once per as-of day
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
        frames = kpi_frames.frames_covering(engine, frames, win_start, win_end, as_of)
        roster = kpis.roster_minutes(engine, start, end)
        present = physios_in_period(frames, roster, start, end)
        current = kpi_frames.summary_from(frames, roster, start, end, physio)
        previous = kpi_frames.summary_from(frames, kpis.roster_minutes(engine, prev_start, prev_end),
                                     prev_start, prev_end, physio)
        daily = kpi_frames.daily_from(frames, trend_start, end, physio)
        attempt("activity", lambda: plots.daily_activity(daily))
        attempt("show_rate", lambda: plots.show_rate_trend(daily))
        attempt("revenue", lambda: plots.revenue(daily))
        attempt("utilization", lambda: plots.utilization(kpi_frames.utilization_from(frames, roster, start, end, physio)))
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


def physios_in_period(frames: kpi_frames.Frames, roster, start: dt.date, end: dt.date) -> set[int]:
    """The physios the filter offers for a range: rostered on some day of it or booked in it (a
    physio who left is offered for the periods they worked only)."""
    d = frames.daily
    booked = d[(d["local_date"] >= start) & (d["local_date"] <= end) & d["physio_id"].notna() & (d["bookings"] > 0)]
    return {int(p) for p in roster["physio_id"]} | {int(p) for p in booked["physio_id"]}


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


PLOTLY_MIMETYPE = "application/vnd.plotly.v1+json"
# No plotly logo, and no "Share chart..." button: the jupyterlab-plotly renderer adds one that
# uploads the chart's data to Chart Studio (plotly's cloud); nothing leaves the clinic's machine.
CHART_CONFIG = {"displaylogo": False, "showSendToCloud": False, "showEditInChartStudio": False,
                "modeBarButtonsToRemove": ["sendDataToCloud", "editInChartStudio"]}
