"""The dashboard's pieces of HTML, pure (tested without a browser): the URL's parameters, values and their changes, the KPI cards, notes, the freshness panel, the model-in-practice panel."""
from __future__ import annotations

import datetime as dt
import html
import os
from dataclasses import dataclass
from urllib.parse import parse_qs

from clinic_lib.core.config import get_settings
from clinic_lib.dashboard import kpis

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
