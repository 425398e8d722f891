"""Plotly figures of the KPI dashboard (pure builders: frames in, figures out).

Every builder takes the frames ``clinic_lib.dashboard.kpis`` returns and gives a ``plotly.graph_objects``
figure; none queries the database, so they are cheap to rebuild on a filter change.
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from clinic_lib.dashboard.kpis import OUTSTANDING_BUCKETS, RISK_BUCKETS

COLORS = {"bookings": "#4C78A8", "attended": "#54A24B", "cancellations": "#E45756",
          "late": "#B279A2", "estimate": "#4C78A8", "paid": "#54A24B", "booked": "#4C78A8",
          "low": "#54A24B", "medium": "#F58518", "high": "#E45756", "not scored": "#BAB0AC"}
HEIGHT = 300
# plotly_white's look without its defaults for some 40 trace types we do not draw: a template
# named in a figure is deep-copied into it (a third of building one) and sent to the page with it.
pio.templates["clinic"] = go.layout.Template(layout=pio.templates["plotly_white"].layout)


def _layout(fig: go.Figure, title: str, yaxis: str | None = None, percent: bool = False) -> go.Figure:
    # The legend sits under the title, both from the left edge: on a phone's narrow chart a legend
    # beside the title would cover it. The top margin holds the title and two rows of legend.
    fig.update_layout(title=dict(text=title, x=0.01, xanchor="left", y=1 - 8 / HEIGHT, yanchor="top",
                                 font=dict(size=15)),
                      height=HEIGHT, margin=dict(l=50, r=10, t=84, b=40), template="clinic",
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0),
                      yaxis_title=yaxis, hovermode="x unified")
    if percent:
        fig.update_yaxes(tickformat=".0%", rangemode="tozero")
    return fig


def _vals(values) -> list:
    """Plain Python numbers (None for missing): plotly.js cannot read int64 typed arrays."""
    return [None if pd.isna(v) else float(v) for v in values]


def _dates(frame: pd.DataFrame) -> list[str]:
    return [str(d) for d in frame.index]


def _day_axis(fig: go.Figure, daily: pd.DataFrame) -> go.Figure:
    """Dates as days (no hours), one tick per day for short ranges."""
    fig.update_xaxes(type="date", tickformat="%d %b", dtick=86400000 if len(daily) <= 14 else None)
    return fig


def daily_activity(daily: pd.DataFrame) -> go.Figure:
    """Bookings, attended and cancellations (late stacked on early) per day."""
    x = _dates(daily)
    fig = go.Figure([
        go.Scatter(x=x, y=_vals(daily["bookings"]), name="bookings", mode="lines+markers",
                   line=dict(color=COLORS["bookings"])),
        go.Scatter(x=x, y=_vals(daily["attended"]), name="attended", mode="lines+markers",
                   line=dict(color=COLORS["attended"])),
        go.Bar(x=x, y=_vals(daily["late_cancellations"]), name="late cancellations", marker_color=COLORS["late"]),
        go.Bar(x=x, y=_vals(daily["early_cancellations"]), name="early cancellations",
               marker_color=COLORS["cancellations"]),
    ])
    fig.update_layout(barmode="stack")
    return _day_axis(_layout(fig, "Bookings, attended, cancellations per day", "appointments"), daily)


def show_rate_trend(daily: pd.DataFrame) -> go.Figure:
    """Daily show rate attended / (attended + no-shows); days with neither are gaps."""
    den = daily["attended"] + daily["no_shows"]
    rate = (daily["attended"] / den.where(den > 0)).astype(float)
    fig = go.Figure([go.Scatter(x=_dates(daily), y=_vals(rate), name="show rate", mode="lines+markers",
                                connectgaps=False, line=dict(color=COLORS["attended"]))])
    fig.update_yaxes(range=[0, 1.05])
    return _day_axis(_layout(fig, "Show rate per day", None, percent=True), daily)


def revenue(daily: pd.DataFrame) -> go.Figure:
    """Revenue estimate of the attended visits vs what has been paid for them, per day (euros)."""
    x = _dates(daily)
    fig = go.Figure([
        go.Bar(x=x, y=_vals(daily["revenue_estimate_cents"] / 100), name="estimate", marker_color=COLORS["estimate"]),
        go.Bar(x=x, y=_vals(daily["paid_cents"] / 100), name="paid", marker_color=COLORS["paid"]),
    ])
    fig.update_layout(barmode="group")
    fig.update_yaxes(tickprefix="€")
    return _day_axis(_layout(fig, "Revenue estimate vs paid (attended visits)", None), daily)


def utilization(util: pd.DataFrame, limit: int = 20) -> go.Figure:
    """Booked and attended minutes over rostered minutes, per physio, least used first; with
    more than ``limit`` physios only the ``limit`` least used (the question is who is under-used)."""
    util = util.copy()
    util["_key"] = pd.to_numeric(util["booked_utilization"], errors="coerce")
    util = util.sort_values("_key", na_position="last")
    title = "Utilization per physio (of rostered minutes)"
    if len(util) > limit:
        title = f"Utilization: the {limit} least used of {len(util)} physios"
        util = util.head(limit)
    names = util["full_name"].fillna(util["physio_id"].astype(str)).tolist()
    booked = pd.to_numeric(util["booked_utilization"], errors="coerce")
    attended = pd.to_numeric(util["attended_utilization"], errors="coerce")
    fig = go.Figure([
        go.Bar(y=names, x=_vals(booked), name="booked", orientation="h", marker_color=COLORS["booked"]),
        go.Bar(y=names, x=_vals(attended), name="attended", orientation="h", marker_color=COLORS["attended"]),
    ])
    fig.update_layout(barmode="group")
    fig = _layout(fig, title, None)
    fig.update_layout(hovermode="y unified", height=max(HEIGHT, 60 + 28 * len(names)))
    fig.update_xaxes(tickformat=".0%", rangemode="tozero")
    fig.update_yaxes(autorange="reversed")
    return fig


def outstanding(out: pd.DataFrame) -> go.Figure:
    """Unpaid amounts of attended visits by age bucket (days since the visit)."""
    out = out.set_index("bucket").reindex(list(OUTSTANDING_BUCKETS), fill_value=0)
    fig = go.Figure([go.Bar(x=[f"{b} days" for b in out.index], y=_vals(out["outstanding_cents"] / 100),
                            text=[f"{int(v)} visit{'s' if int(v) != 1 else ''}" for v in out["visits"]], name="outstanding",
                            marker_color=["#72B7B2", "#F58518", "#E45756", "#9D755D"])])
    fig.update_yaxes(tickprefix="€")
    fig = _layout(fig, "Outstanding by age", None)
    fig.update_layout(hovermode="closest", showlegend=False)
    return fig


def risk(buckets: pd.DataFrame, day) -> go.Figure:
    """Appointments of ``day`` by cancellation-risk bucket."""
    b = buckets.set_index("risk_bucket").reindex(list(RISK_BUCKETS), fill_value=0)
    fig = go.Figure([go.Bar(x=list(b.index), y=_vals(b["appointments"]), name="appointments",
                            marker_color=[COLORS[k] for k in b.index])])
    fig = _layout(fig, f"Appointments on {day} by risk", "appointments")
    fig.update_layout(hovermode="closest", showlegend=False)
    fig.update_yaxes(rangemode="tozero", range=None if b["appointments"].sum() else [0, 1])
    return fig


def _weeks(weekly: pd.DataFrame) -> list[str]:
    return [str(w) for w in weekly["week"]]


def model_auc(weekly: pd.DataFrame, holdout_auc: float | None) -> go.Figure:
    """The model's realised ROC AUC per week (its scored appointments with an outcome, pooled),
    with the estimate on the model's holdout days as a dashed reference line. 0.5 is a coin."""
    fig = go.Figure([go.Scatter(x=_weeks(weekly), y=_vals(weekly["roc_auc"]), name="realised ROC AUC",
                                mode="lines+markers", connectgaps=False, line=dict(color=COLORS["booked"]))])
    if holdout_auc is not None:
        fig.add_hline(y=float(holdout_auc), line=dict(dash="dash", color="#777", width=1.5),
                      annotation=dict(text=f"holdout estimate {float(holdout_auc):.2f}", font=dict(size=11)),
                      annotation_position="bottom right")
    fig = _layout(fig, "Realised ROC AUC per week", None)
    fig.update_yaxes(range=[0.3, 1.0])
    fig.update_xaxes(type="date", tickformat="%d %b", title_text="week from")
    return fig


def model_rates(weekly: pd.DataFrame) -> go.Figure:
    """Per week: the share of the model's scored appointments that failed (no-show or late
    cancellation) against the mean risk it predicted for them."""
    x = _weeks(weekly)
    fig = go.Figure([
        go.Scatter(x=x, y=_vals(weekly["observed_rate"]), name="observed failure rate", mode="lines+markers",
                   line=dict(color=COLORS["cancellations"])),
        go.Scatter(x=x, y=_vals(weekly["mean_risk"]), name="mean predicted risk", mode="lines+markers",
                   line=dict(color=COLORS["booked"], dash="dot")),
    ])
    fig = _layout(fig, "Observed vs predicted failure rate", None, percent=True)
    fig.update_xaxes(type="date", tickformat="%d %b", title_text="week from")
    return fig


def warm_up() -> None:
    """Build and serialize one figure of each kind: plotly loads its validators on first use."""
    import datetime as dt

    import plotly.io as pio

    days = [dt.date(2026, 1, 1), dt.date(2026, 1, 2)]
    daily = pd.DataFrame({c: [1, 0] for c in ("bookings", "attended", "no_shows", "late_cancellations",
                                              "early_cancellations", "revenue_estimate_cents", "paid_cents")},
                         index=days)
    util = pd.DataFrame({"physio_id": [1], "full_name": ["x"], "booked_utilization": [0.5],
                         "attended_utilization": [0.4]})
    out = pd.DataFrame({"bucket": list(OUTSTANDING_BUCKETS), "visits": [1, 0, 0, 0],
                        "outstanding_cents": [100, 0, 0, 0]})
    risks = pd.DataFrame({"risk_bucket": list(RISK_BUCKETS), "appointments": [1, 0, 0, 0]})
    for fig in (daily_activity(daily), show_rate_trend(daily), revenue(daily), utilization(util),
                outstanding(out), risk(risks, days[0])):
        pio.to_json(fig)
