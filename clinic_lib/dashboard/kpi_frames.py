"""The same KPIs from per-(day, physio) sums: one set of queries serves many selections (the dashboard's filters change without a new query)."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pandas as pd
import sqlalchemy as sa

from clinic_lib.core.timeutil import parse_day
from clinic_lib.dashboard.kpis import (
    DAILY_COLUMNS,
    Summary,
    _new_patients_sql,
    _ratio,
    _rebooking_sql,
    daily,
    scope,
)

# --- the same KPIs from per-(day, physio) sums: one set of queries for many selections --------

@dataclass
class Frames:
    """Per (local_date, physio_id) sums over a window of days (every physio): the daily columns,
    new patients, rebooking visits/rebooked; plus every physio's name. Any sub-range and physio
    of the window gives the same KPIs as ``summary`` by adding rows (a patient's first visit and
    each visit's rebooking belong to one day and one physio)."""
    start: dt.date
    end: dt.date
    as_of: dt.date
    daily: pd.DataFrame
    new: pd.DataFrame
    rebook: pd.DataFrame
    names: dict

    def covers(self, start: dt.date, end: dt.date, as_of: dt.date) -> bool:
        """Whether these sums hold every day of start..end as of that day."""
        return self.as_of == as_of and self.start <= start and end <= self.end


def frames(bind, start, end=None, as_of=None) -> Frames:
    """The per-(day, physio) sums of a window. Given an Engine, the three queries run at once on
    their own connections (the databases work while Python waits)."""
    s = scope(start, end, None, as_of)

    def q_daily(conn):
        return daily(conn, s.start, s.end, None, s.as_of, by_physio=True)

    def q_new(conn):
        return pd.DataFrame([dict(r) for r in conn.execute(
            sa.text(_new_patients_sql(s, group=True)), s.params()).mappings()],
            columns=["local_date", "physio_id", "new_patients"])

    def q_rebook(conn):
        return pd.DataFrame([dict(r) for r in conn.execute(
            sa.text(_rebooking_sql(conn, s, group=True)), s.params()).mappings()],
            columns=["local_date", "physio_id", "visits", "rebooked"])

    def q_names(conn):
        return dict(conn.execute(sa.text("SELECT physio_id, full_name FROM physios")).all())

    queries = (q_daily, q_new, q_rebook, q_names)
    if isinstance(bind, sa.Engine):
        from concurrent.futures import ThreadPoolExecutor

        def run(fn):
            with bind.connect() as conn:
                return fn(conn)
        with ThreadPoolExecutor(max_workers=3) as pool:
            per, new, reb, names = [f.result() for f in [pool.submit(run, q) for q in queries]]
    else:
        per, new, reb, names = (q(bind) for q in queries)
    for f in (new, reb):
        f["local_date"] = pd.to_datetime(f["local_date"].astype(str)).dt.date
        for c in f.columns[2:]:
            f[c] = pd.to_numeric(f[c]).astype("int64")
    return Frames(s.start, s.end, s.as_of, per, new, reb, {int(k): v for k, v in names.items()})


def frames_covering(bind, have: Frames | None, start, end=None, as_of=None) -> Frames:
    """Frames for at least ``start``..``end``, reusing ``have`` (a window as of the same day):
    ``have`` itself when it covers the range; else ``have`` plus only the missing days, queried
    (each day's sums do not depend on the window around it); else a new window."""
    s = scope(start, end, None, as_of)
    if have is None or have.as_of != s.as_of:
        return frames(bind, s.start, s.end, s.as_of)
    if have.covers(s.start, s.end, s.as_of):
        return have
    one = dt.timedelta(days=1)
    if s.end < have.start - one or s.start > have.end + one:
        return frames(bind, s.start, s.end, s.as_of)  # apart: joining them would query the gap
    parts = [have]
    if s.start < have.start:
        parts.insert(0, frames(bind, s.start, have.start - one, s.as_of))
    if s.end > have.end:
        parts.append(frames(bind, have.end + one, s.end, s.as_of))

    def joined(name):
        pieces = [getattr(p, name) for p in parts if len(getattr(p, name))]
        if not pieces:
            return getattr(have, name)
        return pd.concat(pieces, ignore_index=True)
    names = {k: v for p in parts for k, v in p.names.items()}
    return Frames(parts[0].start, parts[-1].end, s.as_of, joined("daily"), joined("new"),
                  joined("rebook"), names)


def _pick(frame: pd.DataFrame, start: dt.date, end: dt.date, physio_id) -> pd.DataFrame:
    mask = (frame["local_date"] >= start) & (frame["local_date"] <= end)
    if physio_id is not None:
        mask &= frame["physio_id"] == physio_id
    return frame[mask]


def daily_from(fr: Frames, start, end, physio_id=None) -> pd.DataFrame:
    """``daily(...)`` of a sub-range of the window (every day, zeros where nothing happened)."""
    start, end = parse_day(start), parse_day(end)
    days = [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
    out = (_pick(fr.daily, start, end, physio_id).groupby("local_date")[DAILY_COLUMNS].sum()
           .reindex(days, fill_value=0))
    out.index.name = "local_date"
    return out


def utilization_from(fr: Frames, roster: pd.DataFrame, start, end, physio_id=None) -> pd.DataFrame:
    """``utilization(...)`` of a sub-range, with ``roster`` = roster_minutes of that range."""
    start, end = parse_day(start), parse_day(end)
    per = _pick(fr.daily, start, end, physio_id)
    per = per[per["physio_id"].notna()]
    used = (per.groupby(per["physio_id"].astype("int64"))[["booked_minutes", "attended_minutes"]].sum()
            .reset_index())
    if physio_id is not None:
        roster = roster[roster["physio_id"] == physio_id]
    out = roster[["physio_id", "rostered_minutes"]].merge(used, on="physio_id", how="outer")
    out["full_name"] = out["physio_id"].map(fr.names)
    for c in ("rostered_minutes", "booked_minutes", "attended_minutes"):
        out[c] = out[c].fillna(0.0).astype(float)
    den = out["rostered_minutes"].where(out["rostered_minutes"] > 0)
    out["booked_utilization"] = (out["booked_minutes"] / den).astype(object).where(den.notna(), None)
    out["attended_utilization"] = (out["attended_minutes"] / den).astype(object).where(den.notna(), None)
    cols = ["physio_id", "full_name", "rostered_minutes", "booked_minutes", "attended_minutes",
            "booked_utilization", "attended_utilization"]
    return out[cols].sort_values("physio_id").reset_index(drop=True)


def summary_from(fr: Frames, roster: pd.DataFrame, start, end=None, physio_id=None) -> Summary:
    """``summary(..., with_outstanding=False)`` of a sub-range of the window; ``roster`` =
    roster_minutes(start, end) of every physio."""
    start = parse_day(start)
    end = parse_day(end) if end is not None else start
    if start < fr.start or end > fr.end:
        raise ValueError(f"{start}..{end} is outside the window {fr.start}..{fr.end}")
    physio_id = None if physio_id in (None, "", "all") else int(physio_id)
    t = _pick(fr.daily, start, end, physio_id)[DAILY_COLUMNS].sum()
    ros = roster if physio_id is None else roster[roster["physio_id"] == physio_id]
    rostered = float(ros["rostered_minutes"].sum())
    n_new = int(_pick(fr.new, start, end, physio_id)["new_patients"].sum())
    reb = _pick(fr.rebook, start, end, physio_id)[["visits", "rebooked"]].sum()
    att, ns = int(t["attended"]), int(t["no_shows"])
    return Summary(
        start=start, end=end, physio_id=physio_id, as_of=fr.as_of,
        bookings=int(t["bookings"]), attended=att, no_shows=ns,
        show_rate=_ratio(att, att + ns), dna_rate=_ratio(ns, att + ns),
        cancellations=int(t["cancellations"]), late_cancellations=int(t["late_cancellations"]),
        early_cancellations=int(t["early_cancellations"]),
        revenue_estimate_cents=int(t["revenue_estimate_cents"]), paid_cents=int(t["paid_cents"]),
        booked_utilization=_ratio(float(t["booked_minutes"]), rostered),
        attended_utilization=_ratio(float(t["attended_minutes"]), rostered),
        new_patients=n_new, rebooking_rate=_ratio(int(reb["rebooked"]), int(reb["visits"])),
        patient_visit_average=_ratio(att, n_new))
