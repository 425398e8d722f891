"""Do the calls work? Failure rates of the evening lists' appointments, compared two ways.

The rows: every appointment in the top ``k`` ranks (k = CALL_CAPACITY) of the evening lists
(``priorities``) of the chosen days, with its risk at the time (``risk_score``, cut into risk
bands), whether it was held out (``holdout``), its call outcomes (``call_outcomes``) and its outcome
by the model's own target (``monitoring.judge``: failed = no-show or late cancellation; early
cancellations and appointments still booked have no outcome and are left out).

**(a) Observational** (``observational_table``): among the appointments reception was meant to call
(not held out), the failure rate of those *reached* (a call outcome ``reached``, ``confirmed``,
``rescheduled`` or ``canceled``) against those not reached (only ``voicemail``/``no_answer``, or no
call recorded), within each risk band. This is not the effect of calling: who answers the phone
differs from who does not (the reliable patients pick up), so the gap mixes the call's effect with
who the patients are. ``OBSERVATIONAL_NOTE`` says so wherever the table is shown.

**(b) With the randomised holdout** (``holdout_effect``): appointments the HMAC held out
(``holdout.py``) against those reception was to call, in the same risk bands. The holdout was drawn
at random, so the two groups differ only by chance and by the calls. Both estimates are
*intention to call*: the "called" group includes the patients who never answered. In band k, with
n1 appointments to call and y1 of them failed, and n0 held out with y0 failed (N = n1 + n0):

- risk difference, Mantel-Haenszel: RD = sum_k (y1 n0 - y0 n1) / N  /  sum_k n1 n0 / N, with
  Sato's (1989) variance Var = (RD * sum_k P_k + sum_k Q_k) / (sum_k n1 n0 / N)^2 where
  P_k = (n1^2 y0 - n0^2 y1 + n1 n0 (n0 - n1) / 2) / N^2 and Q_k = (y1 (n0 - y0) + y0 (n1 - y1)) / (2 N);
- relative risk, Mantel-Haenszel: RR = sum_k y1 n0 / N  /  sum_k y0 n1 / N, with the
  Greenland-Robins (1985) variance of its log: sum_k (n1 n0 (y1 + y0) - y1 y0 N) / N^2, divided
  by (sum_k y1 n0 / N)(sum_k y0 n1 / N);
- 95 % intervals: RD +- 1.96 SE; exp(log RR +- 1.96 SE).

A band where one group is empty adds nothing (its weight is 0). Both estimators stay valid with
few rows per band (they are "dually consistent"), but few held-out rows give a wide interval.
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import pandas as pd
import sqlalchemy as sa

from clinic_lib.core import db
from clinic_lib.core.config import Settings, get_settings
from clinic_lib.core.timeutil import parse_day
from clinic_lib.modeling.monitoring import list_outcomes

REACHED = ("reached", "confirmed", "rescheduled", "canceled")  # someone spoke to the patient
MIN_HELD_OUT = 30  # fewer held-out outcome rows: the estimate is shown with a warning

OBSERVATIONAL_NOTE = (
    "This comparison is observational: reception chose nobody, but the patients chose whether to "
    "answer. Who answers the phone differs from who does not (reliable patients pick up more often), "
    "so the difference between reached and not reached mixes the effect of the call with who the "
    "patients are. It is not the effect of calling; the randomised holdout measures that.")


def band_cuts(bands, settings: Settings | None = None) -> tuple[float, ...]:
    """Risk band boundaries from a parameter: None (RISK_BUCKET_THRESHOLDS), '0.1,0.25' or a list."""
    if bands is None:
        bands = (settings or get_settings()).risk_thresholds
    if isinstance(bands, str):
        bands = [b for b in bands.replace(";", ",").split(",") if b.strip()]
    try:
        cuts = tuple(float(b) for b in bands)
    except (TypeError, ValueError):
        raise ValueError(f"risk bands: expected increasing numbers between 0 and 1 like 0.10,0.25, got {bands!r}") from None
    if any(not 0 < c < 1 for c in cuts) or list(cuts) != sorted(set(cuts)):
        raise ValueError(f"risk bands: expected increasing numbers between 0 and 1 like 0.10,0.25, got {bands!r}")
    return cuts


def band_labels(cuts) -> list[str]:
    """'< 0.10', '0.10-0.25', '>= 0.25' for cuts (0.10, 0.25); 'all' without cuts."""
    if not cuts:
        return ["all"]
    edges = [f"{c:.2f}" for c in cuts]
    return [f"< {edges[0]}"] + [f"{a}-{b}" for a, b in zip(edges, edges[1:])] + [f">= {edges[-1]}"]


def assign_bands(risk, cuts) -> pd.Categorical:
    labels = band_labels(cuts)
    index = np.searchsorted(np.asarray(cuts, dtype=float), np.asarray(risk, dtype=float), side="right")
    return pd.Categorical(np.asarray(labels, dtype=object)[index], categories=labels, ordered=True)


# --- the rows ---------------------------------------------------------------------------------------

def call_list_rows(start, end, engine: sa.Engine | None = None, settings: Settings | None = None,
                   k: int | None = None, bands=None) -> pd.DataFrame:
    """The top ``k`` ranks of the evening lists of [start, end] with their calls and outcomes: day,
    appointment_id, rank, risk_score, band, holdout, called (a call outcome recorded), reached,
    has_outcome, failed."""
    settings = settings or get_settings()
    start, end = parse_day(start), parse_day(end)
    if end < start:
        raise ValueError(f"the date range is empty: {start} .. {end}")
    k = int(k or settings.call_capacity)
    cuts = band_cuts(bands, settings)
    engine = engine or db.make_engine(settings.database_url)
    with engine.connect() as conn:
        rows = list_outcomes(conn, start, end, k=k, late_cancel_hours=settings.late_cancel_hours)
        calls = _call_outcomes(conn, rows["appointment_id"].tolist())
    columns = ["day", "appointment_id", "rank", "risk_score", "band", "holdout", "called", "reached",
               "has_outcome", "failed"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    rows["called"] = rows["appointment_id"].isin(calls["appointment_id"])
    rows["reached"] = rows["appointment_id"].isin(calls.loc[calls["outcome"].isin(REACHED), "appointment_id"])
    rows["holdout"] = rows["holdout"].astype(int).astype(bool)
    rows["band"] = assign_bands(rows["risk_score"].astype(float), cuts)
    rows["day"] = rows["day"].astype(str)
    return rows[columns].sort_values(["day", "rank"]).reset_index(drop=True)


def _call_outcomes(conn, appointment_ids) -> pd.DataFrame:
    c = db.call_outcomes
    ids = sorted({int(i) for i in appointment_ids})
    found = []
    for i in range(0, len(ids), 900):  # the index call_outcomes(appointment_id, outcome_id)
        found += conn.execute(sa.select(c.c.appointment_id, c.c.outcome)
                              .where(c.c.appointment_id.in_(ids[i:i + 900]))).all()
    return pd.DataFrame(found, columns=["appointment_id", "outcome"])


# --- (a) observational ------------------------------------------------------------------------------

def _rate_columns(part: pd.DataFrame, prefix: str) -> dict:
    n, y = int(len(part)), int(part["failed"].sum())
    return {f"{prefix} n": n, f"{prefix} failed": y, f"{prefix} failure rate": y / n if n else None}


def observational_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per risk band (and all bands): failure rates of the appointments to call that were reached
    vs not reached, and the difference (reached minus not reached). Observational: see the note."""
    judged = rows.loc[(rows["has_outcome"].astype(bool) & ~rows["holdout"].astype(bool)).to_numpy()]
    out = []
    bands = list(rows["band"].cat.categories) if hasattr(rows["band"], "cat") else sorted(rows["band"].unique())
    for band in bands + ["all bands"]:
        part = judged if band == "all bands" else judged[judged["band"] == band]
        row = {"band": band, **_rate_columns(part[part["reached"]], "reached"),
               **_rate_columns(part[~part["reached"]], "not reached")}
        a, b = row["reached failure rate"], row["not reached failure rate"]
        row["difference"] = a - b if a is not None and b is not None else None
        out.append(row)
    return pd.DataFrame(out).set_index("band")


# --- (b) with the holdout -----------------------------------------------------------------------------

def mantel_haenszel(strata: pd.DataFrame) -> dict:
    """Pooled risk difference and relative risk over strata with columns n1, y1 (called: to call,
    failed), n0, y0 (held out); see the module doc for the formulas. Values are None where they
    are not defined (no stratum with both groups; no failure in one group for the RR)."""
    s = strata[(strata["n1"] > 0) & (strata["n0"] > 0)].astype(float)
    out = {"risk_difference": None, "rd_se": None, "relative_risk": None, "log_rr_se": None}
    if s.empty:
        return out
    n1, y1, n0, y0 = s["n1"], s["y1"], s["n0"], s["y0"]
    N = n1 + n0
    w = (n1 * n0 / N).sum()
    rd = ((y1 * n0 - y0 * n1) / N).sum() / w
    P = ((n1 ** 2 * y0 - n0 ** 2 * y1 + n1 * n0 * (n0 - n1) / 2) / N ** 2).sum()
    Q = ((y1 * (n0 - y0) + y0 * (n1 - y1)) / (2 * N)).sum()
    out["risk_difference"] = float(rd)
    out["rd_se"] = float(math.sqrt(max(rd * P + Q, 0.0)) / w)
    R, S = (y1 * n0 / N).sum(), (y0 * n1 / N).sum()
    if R > 0 and S > 0:
        out["relative_risk"] = float(R / S)
        out["log_rr_se"] = float(math.sqrt(((n1 * n0 * (y1 + y0) - y1 * y0 * N) / N ** 2).sum() / (R * S)))
    return out


@dataclass
class HoldoutEffect:
    """The effect of being on the list to call (vs held out), pooled over risk bands."""
    level: float
    strata: pd.DataFrame  # per band: called n/failed/rate, held out n/failed/rate, difference
    n_called: int
    n_held_out: int
    risk_difference: float | None = None
    rd_low: float | None = None
    rd_high: float | None = None
    relative_risk: float | None = None
    rr_low: float | None = None
    rr_high: float | None = None
    messages: list[str] = field(default_factory=list)  # why something is missing, or how to read it

    @property
    def estimated(self) -> bool:
        return self.risk_difference is not None

    def table(self) -> pd.DataFrame:
        pct = f"{self.level:.0%}"
        return pd.DataFrame({
            "estimate": [self.risk_difference, self.relative_risk],
            f"{pct} interval from": [self.rd_low, self.rr_low], "to": [self.rd_high, self.rr_high],
            "no effect would be": [0.0, 1.0]},
            index=["risk difference (called - held out)", "relative risk (called / held out)"])

    def summary(self) -> str:
        if not self.estimated:
            return " ".join(self.messages)
        text = (f"Calling changed the failure rate by {self.risk_difference:+.1%} "
                f"({self.level:.0%} interval {self.rd_low:+.1%} to {self.rd_high:+.1%})")
        if self.relative_risk is not None:
            text += (f"; relative risk {self.relative_risk:.2f} ({self.rr_low:.2f} to {self.rr_high:.2f})")
        return text + f", from {self.n_called} appointments to call and {self.n_held_out} held out."


def strata_counts(rows: pd.DataFrame) -> pd.DataFrame:
    """Per band, the outcome rows: n1/y1 to call (not held out), n0/y0 held out."""
    judged = rows.loc[rows["has_outcome"].astype(bool).to_numpy()]
    held = judged["holdout"].astype(bool)
    bands = list(rows["band"].cat.categories) if hasattr(rows["band"], "cat") else sorted(rows["band"].unique())
    out = []
    for band in bands:
        in_band = (judged["band"] == band).to_numpy()
        called, held_out = judged[in_band & ~held.to_numpy()], judged[in_band & held.to_numpy()]
        out.append({"band": band, "n1": len(called), "y1": int(called["failed"].sum()),
                    "n0": len(held_out), "y0": int(held_out["failed"].sum())})
    return pd.DataFrame(out, columns=["band", "n1", "y1", "n0", "y0"]).set_index("band")


def holdout_effect(rows: pd.DataFrame, level: float = 0.95) -> HoldoutEffect:
    """The effect of calling from held-out vs to-call appointments in the same risk bands."""
    counts = strata_counts(rows)
    strata = pd.DataFrame({
        "called n": counts["n1"], "called failed": counts["y1"],
        "called failure rate": (counts["y1"] / counts["n1"]).where(counts["n1"] > 0),
        "held out n": counts["n0"], "held out failed": counts["y0"],
        "held out failure rate": (counts["y0"] / counts["n0"]).where(counts["n0"] > 0)})
    strata["difference"] = strata["called failure rate"] - strata["held out failure rate"]
    n1, n0 = int(counts["n1"].sum()), int(counts["n0"].sum())
    effect = HoldoutEffect(level, strata, n1, n0)
    if rows.empty:
        effect.messages.append("There are no evening lists in this date range: nothing to compare.")
        return effect
    if n0 == 0:
        effect.messages.append(
            "No held-out appointment has an outcome in this date range, so the effect of calling cannot "
            "be estimated: the holdout was off (CALL_HOLDOUT_SHARE = 0) or the days are too recent. "
            "Switch it on (docs/call-effect.md) and come back after a few weeks.")
        return effect
    if n1 == 0:
        effect.messages.append("No appointment to call has an outcome in this date range: nothing to compare "
                               "the held-out ones with.")
        return effect
    mh = mantel_haenszel(counts)
    if mh["risk_difference"] is None:
        effect.messages.append("No risk band holds both held-out appointments and appointments to call: "
                               "choose wider bands or a longer date range.")
        return effect
    z = NormalDist().inv_cdf(0.5 + level / 2)
    effect.risk_difference = mh["risk_difference"]
    effect.rd_low = mh["risk_difference"] - z * mh["rd_se"]
    effect.rd_high = mh["risk_difference"] + z * mh["rd_se"]
    if mh["relative_risk"] is not None:
        log_rr = math.log(mh["relative_risk"])
        effect.relative_risk = mh["relative_risk"]
        effect.rr_low = math.exp(log_rr - z * mh["log_rr_se"])
        effect.rr_high = math.exp(log_rr + z * mh["log_rr_se"])
    else:
        effect.messages.append("One group had no failure at all: the relative risk is not defined.")
    if n0 < MIN_HELD_OUT:
        effect.messages.append(f"Only {n0} held-out appointments have an outcome: the interval is wide; "
                               "read it as a first look.")
    calls_to_held_out = int((rows["holdout"].astype(bool) & rows["called"].astype(bool)).sum())
    if calls_to_held_out:
        effect.messages.append(
            f"{calls_to_held_out} held-out appointments were called anyway; they stay in the held-out group "
            "(the comparison is by assignment), which makes the effect look smaller than it is.")
    return effect


def reach_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """How the appointments to call went: called, reached, share reached, per band."""
    to_call = rows[~rows["holdout"].astype(bool)]
    g = to_call.groupby("band", observed=False)
    out = pd.DataFrame({"to call": g.size(), "called": g["called"].sum().astype(int),
                        "reached": g["reached"].sum().astype(int)})
    out.loc["all bands"] = out.sum()
    out["share reached"] = (out["reached"] / out["to call"]).where(out["to call"] > 0)
    out["held out"] = list(rows[rows["holdout"].astype(bool)].groupby("band", observed=False).size()) + \
        [int(rows["holdout"].astype(bool).sum())]
    return out


def plot_rates(observational: pd.DataFrame, effect: HoldoutEffect):
    """Failure rates per risk band: reached / not reached (observational) and to call / held out."""
    import matplotlib.pyplot as plt
    bands = [b for b in observational.index if b != "all bands"]
    x = np.arange(len(bands))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    ax1.bar(x - 0.2, observational.loc[bands, "reached failure rate"].astype(float), 0.4, label="reached")
    ax1.bar(x + 0.2, observational.loc[bands, "not reached failure rate"].astype(float), 0.4, label="not reached")
    ax1.set(xticks=x, xticklabels=bands, xlabel="risk band", ylabel="failure rate",
            title="Observational: reached vs not reached")
    ax2.bar(x - 0.2, effect.strata.loc[bands, "called failure rate"].astype(float), 0.4, label="to call")
    ax2.bar(x + 0.2, effect.strata.loc[bands, "held out failure rate"].astype(float), 0.4, label="held out")
    ax2.set(xticks=x, xticklabels=bands, xlabel="risk band", title="Randomised: to call vs held out")
    ax1.legend()
    ax2.legend()
    fig.tight_layout()
    return fig


def date_range(start, end, engine: sa.Engine | None = None) -> tuple[dt.date, dt.date]:
    """The range to analyse: empty parameters mean the first and last day with an evening list."""
    if start and end:
        return parse_day(start), parse_day(end)
    engine = engine or db.make_engine()
    p = db.priorities
    with engine.connect() as conn:
        first, last = conn.execute(sa.select(sa.func.min(p.c.day), sa.func.max(p.c.day))).one()
    if first is None:
        today = dt.date.today()
        return parse_day(start) if start else today, parse_day(end) if end else today
    return parse_day(start or str(first)), parse_day(end or str(last))


def show(fig) -> None:
    """Show a figure in a notebook with its axes' titles as the image's alternative text, once."""
    import matplotlib.pyplot as plt
    from IPython.display import display
    alt = "; ".join(ax.get_title() for ax in fig.axes if ax.get_title()) or "figure"
    display(fig, metadata={"image/png": {"alt": alt}})
    plt.close(fig)


@dataclass
class CallEffectReport:
    """Everything the call-effect notebook shows, from ``analyse``."""
    start: dt.date
    end: dt.date
    k: int
    rows: pd.DataFrame  # call_list_rows
    reach: pd.DataFrame  # reach_summary
    observational: pd.DataFrame  # observational_table
    effect: HoldoutEffect


def analyse(start=None, end=None, bands=None, k: int | None = None, engine: sa.Engine | None = None,
            settings: Settings | None = None, level: float = 0.95) -> CallEffectReport:
    """Both comparisons for the evening lists of [start, end] (empty: every day with a list)."""
    settings = settings or get_settings()
    engine = engine or db.make_engine(settings.database_url)
    start, end = date_range(start, end, engine)
    k = int(k or settings.call_capacity)
    rows = call_list_rows(start, end, engine, settings, k=k, bands=bands)
    if rows.empty:
        rows["band"] = assign_bands([], band_cuts(bands, settings))
    return CallEffectReport(start, end, k, rows, reach_summary(rows), observational_table(rows),
                            holdout_effect(rows, level))
