"""The demo clinic: a believable physiotherapy practice, written as the clinic's CSV files.

``generate_demo(data_dir, seed, today, ...)`` simulates one "world" (every appointment from
``today - days_history`` to ``today + days_ahead`` with when it was booked, whether and when it was
canceled, and how it ended) and writes it as the clinic would have exported it:

- ``data_dir/raw/*.csv``: the state at the END of day ``raw_as_of`` (default ``today - drop_days``,
  the day before the first drop, so raw plus every drop in order is the clinic as of ``today``): appointments
  that started before then with their final status, future ones booked by then as ``booked`` (or
  ``canceled`` if canceled by then), payments made by then, patients and physios existing then.
- ``data_dir/daily/D/*.csv`` for D in ``today - drop_days + 1 .. today``: the state at the end of D
  of D's appointments (final statuses), of D's payments, of every appointment booked or canceled
  on D (incl. future ones), and the patients/physios those rows reference (plus patients created
  on D). The demo pretends ``today`` is over: the drop for ``today`` has final outcomes.
  Applying the drops after ``raw`` with ``raw_as_of = today - drop_days`` gives exactly the raw
  export as of ``today`` (tested). Note: a drop for a day before ``raw_as_of`` holds older states,
  so it must not be applied over a later raw export (a paid appointment cannot go back to booked).

Same (seed, today, sizes) -> byte-identical files (numpy ``Generator(seed)``, no set/dict order).

How the world is built (all vectorised except two short loops over series and physios):

1. Physios (~80 % full-time Mon-Fri 08:00-12:00 + 13:00-17:00, ~30 % of them also Saturday
   08:00-12:00; the rest part-time on 3-4 weekdays, half of them mornings only 08:00-13:00).
   With >= 5 physios one has left the clinic: the exports mark them inactive (``active`` 0) from
   the day of their last appointment on, so the load or that day's drop ends their roster there
   (``roster.py``). Closed on German national holidays
   and Dec 24/31; each physio takes ~7 % of weeks off.
2. Each roster block of each working day is filled with appointment slots of 30/45/60 minutes on
   the 15-minute grid with a few 15/30-minute gaps (looser in July/August and around Christmas,
   tighter as the practice grows), so one physio is never double-booked. The i-th slot of a
   physio's week is "lane" i; a lane is cut into treatment series of 5-12 roughly weekly visits,
   each series one patient of that physio's own pool (new patients arrive continuously; about a
   quarter of series are returning patients). A new patient's first visit takes a 60-minute slot
   (swapped with a follow-up of the same physio and week when needed). Every patient sees one
   physio only, so a patient is never in two places at once. Utilization ~80 %.
3. Each booking gets a lead time (new patients: 12 % same-day, 68 % 1-14 days, 20 % 15-45 days;
   follow-ups: 4 % same-day, 66 % 1-14 days mostly ~7, 30 % 15-60 days), booked between 08:00 and
   18:30 Mon-Sat (same-day: from 07:00 until 20 min before), never before the series' first
   booking.
4. Outcomes: a multinomial logit (completed / no-show / late cancel < 24 h / early cancel) with the
   planted effects of ``EFFECTS`` (logit scale): a persistent per-patient unreliability
   u = N(0, 1.3) + 2.2 for a 15 % minority of chronic no-showers (centred; no-show x1.0, late
   cancel x0.9, early cancel x0.3); lead time (same-day -2.2, 1-3 d -0.8, 4-14 d 0, 15-30 d +0.8,
   > 30 d +1.5); first visit +0.7; start before 09:00 +0.4, from 16:00 +0.35; Monday +0.3,
   Friday +0.35; age -0.025 per year over 45, under 30 +0.4, unknown +0.2; reminders
   (reminder_consent and an email) -0.7; no phone +0.4; no consent form +0.2 (late cancel gets
   0.8 x these). Early cancels rise with lead time and need a lead of > 25 h. Realised: no-show
   ~11 % (same-day ~2.5 %, > 30 days ~22 %), late cancel ~4.7 %, early cancel ~8.5 %.
5. A canceled slot is re-booked by another patient of the physio with probability 0.55 (>= 48 h
   left), 0.35 (24-48 h), 0.15 (< 24 h); those short-notice bookings are rarely missed.
   Cancellations and re-bookings fall in day-time (07:00-21:00) when the window allows.
6. Payments for completed visits: 80 % the same day 1-20 min after the end (card 65 % / cash),
   15 % later (insurance 60 % / transfer, 3-60 days, weekdays), 5 % never; 2 % of the same-day
   ones are split (40 % now, the rest by transfer later).
7. Evening lists and calls until the raw export (``_evening_lists``, ``CALLS``): for each clinic
   day, at 17:00 the day before, the CALL_CAPACITY appointments still booked with the highest
   planted risk of failing; 20 % of them held out at random, the others called if they have a
   phone and reached with a probability that falls with the patient's unreliability (~50 % on
   these lists); a reached call multiplies the odds of failing by 0.6. The listed appointments'
   outcomes are drawn at the list from the same logit with that effect. ``raw`` ships the lists and
   the call outcomes (``call_history.py``); from the first drop on, the chain builds the lists.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from clinic_lib.core.config import get_settings
from clinic_lib.ingest.call_history import CALL_HISTORY_COLUMNS
from clinic_lib.ingest.demo_calendar import DAY_S, _dn, _fmt, _localize, _money, _to_local
from clinic_lib.ingest.demo_world import CALLS, World, build_world
from clinic_lib.ingest.drop_format import COLUMNS, write_csv

# --- states and files ---------------------------------------------------------------------------

def _end_of_day_utc(day: dt.date, tz) -> int:
    return int(_localize(np.array([(_dn(day) + 1) * DAY_S]), tz)[0])


class _Formatted:
    """Text columns of the whole world, formatted once, selected per state."""

    def __init__(self, w: World, tz):
        a = w.appts
        self.tz = tz
        self.appt = a
        self.start_txt = _fmt(a["start_s"].to_numpy(), tz)
        self.end_txt = _fmt(a["end_s"].to_numpy(), tz)
        self.booked_txt = _fmt(a["booked_s"].to_numpy(), tz)
        can = a["canceled_s"].to_numpy()
        self.can_txt = np.full(len(a), "", dtype=object)
        self.can_txt[can >= 0] = _fmt(can[can >= 0], tz)
        self.price_txt = _money(a["price_cents"].to_numpy())
        self.final_status = np.array(["completed", "no_show", "canceled", "canceled"], dtype=object)[a["outcome"]]
        self.start_day = _to_local(a["start_s"].to_numpy(), tz) // DAY_S
        self.booked_day = _to_local(a["booked_s"].to_numpy(), tz) // DAY_S
        self.can_day = np.where(can >= 0, _to_local(np.maximum(can, 0), tz) // DAY_S, -10 ** 9)
        p = w.payments
        self.pay = p
        self.paid_txt = _fmt(p["paid_s"].to_numpy(), tz)
        self.paid_day = _to_local(p["paid_s"].to_numpy(), tz) // DAY_S
        self.amount_txt = _money(p["amount_cents"].to_numpy())
        pt = w.patients
        self.patients = pt
        self.created_txt = _fmt(pt["created_s"].to_numpy(), tz)
        self.created_day = _to_local(pt["created_s"].to_numpy(), tz) // DAY_S
        # A physio who left worked up to their last appointment: the export marks them inactive
        # from that day's drop on (the refresh then ends their roster after it; roster.py).
        ph = w.physios
        physio_of = a["physio_id"].to_numpy()
        self.last_day = {int(pid): int(self.start_day[physio_of == pid].max(initial=-10 ** 9))
                         for pid in ph.loc[ph["active"] == 0, "physio_id"]}

    def physios(self, rows: pd.DataFrame, day_number: int) -> pd.DataFrame:
        """Physio rows as the export of day ``day_number`` has them: a leaver is active until
        the day of their last appointment, inactive from then on."""
        out = rows[COLUMNS["physios"]].copy()
        gone = out["physio_id"].map(lambda pid: self.last_day.get(int(pid), 10 ** 9) <= day_number)
        out["active"] = np.where(gone, 0, 1)
        return out

    def appointments(self, rows: np.ndarray, cutoff: int) -> pd.DataFrame:
        """Appointment rows ``rows`` (positions) in their state at UTC instant ``cutoff``."""
        a = self.appt
        start = a["start_s"].to_numpy()[rows]
        can = a["canceled_s"].to_numpy()[rows]
        canceled_now = (can >= 0) & (can < cutoff)
        # a canceled appointment was canceled before its start, so once started it is final
        status = np.where(canceled_now, "canceled",
                          np.where(start < cutoff, self.final_status[rows], "booked")).astype(object)
        return pd.DataFrame({
            "appointment_id": a["appointment_id"].to_numpy()[rows], "patient_id": a["patient_id"].to_numpy()[rows],
            "physio_id": a["physio_id"].to_numpy()[rows], "appt_start": self.start_txt[rows],
            "appt_end": self.end_txt[rows], "booked_at": self.booked_txt[rows], "status": status,
            "canceled_at": np.where(canceled_now, self.can_txt[rows], ""),
            "price_estimate": self.price_txt[rows], "is_first_visit": a["is_first_visit"].to_numpy()[rows],
        })[COLUMNS["appointments"]]

    def payments(self, rows: np.ndarray) -> pd.DataFrame:
        p = self.pay
        return pd.DataFrame({"payment_id": p["payment_id"].to_numpy()[rows],
                             "appointment_id": p["appointment_id"].to_numpy()[rows],
                             "amount": self.amount_txt[rows], "paid_at": self.paid_txt[rows],
                             "method": p["method"].to_numpy()[rows]})[COLUMNS["payments"]]

    def patient_rows(self, rows: np.ndarray) -> pd.DataFrame:
        out = self.patients.iloc[rows][COLUMNS["patients"][:-1]].copy()
        out["created_at"] = self.created_txt[rows]
        return out[COLUMNS["patients"]]


def _write_raw(f: _Formatted, w: World, folder: Path, day: dt.date) -> dict:
    cutoff = _end_of_day_utc(day, f.tz)
    a = w.appts
    rows = np.flatnonzero(a["booked_s"].to_numpy() < cutoff)
    prow = np.flatnonzero(w.payments["paid_s"].to_numpy() < cutoff)
    patrow = np.flatnonzero(w.patients["created_s"].to_numpy() < cutoff)
    appts = f.appointments(rows, cutoff)
    write_csv(f.patient_rows(patrow), folder / "patients.csv")
    write_csv(f.physios(w.physios, _dn(day)), folder / "physios.csv")
    write_csv(w.hours[COLUMNS["physio_hours"]], folder / "physio_hours.csv")
    write_csv(appts, folder / "appointments.csv")
    write_csv(f.payments(prow), folder / "payments.csv")
    return {"appointments": len(appts), "payments": len(prow), "patients": len(patrow),
            "status": appts["status"].value_counts().to_dict()}


def _write_drop(f: _Formatted, w: World, folder: Path, day: dt.date) -> int:
    cutoff = _end_of_day_utc(day, f.tz)
    dn = _dn(day)
    rows = np.flatnonzero((f.start_day == dn) | (f.booked_day == dn) | (f.can_day == dn))
    appts = f.appointments(rows, cutoff)
    prow = np.flatnonzero(f.paid_day == dn)
    pat_ids = np.union1d(appts["patient_id"].to_numpy(),
                         w.patients["patient_id"].to_numpy()[f.created_day == dn])
    patrow = np.flatnonzero(np.isin(w.patients["patient_id"].to_numpy(), pat_ids))
    phys = w.physios[w.physios["physio_id"].isin(appts["physio_id"])]
    write_csv(f.patient_rows(patrow), folder / "patients.csv")
    write_csv(f.physios(phys, dn), folder / "physios.csv")
    write_csv(appts, folder / "appointments.csv")
    write_csv(f.payments(prow), folder / "payments.csv")
    return len(appts)


def _write_call_history(w: World, folder: Path, cutoff: int, tz) -> dict:
    """The evening lists built and the calls made before ``cutoff`` (UTC s), in the format of
    ``call_history.py``: ``call_lists.csv`` and ``call_outcomes.csv``."""
    c = w.calls
    lists = c[c["built_s"] < cutoff]
    write_csv(pd.DataFrame({"day": lists["day"], "rank": lists["rank"], "appointment_id": lists["appointment_id"],
                            "risk_score": lists["risk"].map("{:.4f}".format), "holdout": lists["holdout"],
                            "built_at": _fmt(lists["built_s"].to_numpy(), tz)})[CALL_HISTORY_COLUMNS["call_lists"]],
              folder / "call_lists.csv")
    made = c[(c["recorded_s"] >= 0) & (c["recorded_s"] < cutoff)].sort_values(["recorded_s", "appointment_id"])
    write_csv(pd.DataFrame({"appointment_id": made["appointment_id"], "outcome": made["call_outcome"],
                            "recorded_at": _fmt(made["recorded_s"].to_numpy(), tz)})
              [CALL_HISTORY_COLUMNS["call_outcomes"]], folder / "call_outcomes.csv")
    return {"call_list_rows": len(lists), "calls": len(made),
            "held_out": int(lists["holdout"].sum()), "reached": int(made["call_outcome"].isin(
                ("reached", "confirmed")).sum())}


def generate_demo(data_dir: Path, seed: int, today: dt.date, physios: int = 8, patients: int = 3200,
                  days_history: int = 730, days_ahead: int = 21, drop_days: int = 14,
                  raw_as_of: dt.date | None = None, raw_dir: Path | None = None,
                  calls_until: dt.date | None = None, call_odds_ratio: float = CALLS["odds_ratio"]) -> dict:
    """Write ``data_dir/raw`` (state at the end of ``raw_as_of``, default ``today - drop_days``, so that
    raw plus every drop in order is the clinic as of ``today``) and the daily
    drops for ``today - drop_days + 1 .. today``; return a summary (counts, rates, paths).

    ``raw_dir`` (default ``data_dir/raw``) lets a test write a second raw export of the same world.
    The clinic phoned from evening lists until the evening of ``calls_until`` (default
    ``raw_as_of``: from the first drop on, Clinic Ops' own chain builds the lists); ``raw`` holds
    those lists and calls (``call_lists.csv``, ``call_outcomes.csv``). ``call_odds_ratio``: the
    planted effect of a reached call on the odds of failing (1.0: none).
    """
    settings = get_settings()
    tz = settings.clinic_tz
    data_dir = Path(data_dir)
    if physios < 1 or patients < 1 or days_history < 1 or days_ahead < 0 or drop_days < 0:
        from clinic_lib.core.errors import CannotRun
        raise CannotRun("demo: physios, patients and days_history must be >= 1, days_ahead and drop_days >= 0")
    if drop_days > days_history:
        from clinic_lib.core.errors import CannotRun
        raise CannotRun(f"demo: drop_days ({drop_days}) must not exceed days_history ({days_history})")
    if not call_odds_ratio > 0:
        from clinic_lib.core.errors import CannotRun
        raise CannotRun(f"demo: the call's odds ratio must be above 0 (1 = no effect), got {call_odds_ratio}")
    raw_as_of = raw_as_of or (today - dt.timedelta(days=drop_days))
    calls_until = calls_until or raw_as_of
    w = build_world(seed, today, physios, patients, days_history, days_ahead, tz, calls_until=calls_until,
                    call_capacity=settings.call_capacity, call_odds_ratio=call_odds_ratio)
    f = _Formatted(w, tz)
    raw_dir = Path(raw_dir) if raw_dir else data_dir / "raw"
    raw = _write_raw(f, w, raw_dir, raw_as_of)
    calls = _write_call_history(w, raw_dir, _end_of_day_utc(raw_as_of, tz), tz)
    drops = []
    for k in range(drop_days - 1, -1, -1):
        day = today - dt.timedelta(days=k)
        _write_drop(f, w, data_dir / "daily" / day.isoformat(), day)
        drops.append(day.isoformat())

    a = w.appts
    past = a[a["start_s"] < _end_of_day_utc(today, tz)]
    lead_h = (a["start_s"] - a["booked_s"]) / 3600
    return {
        "today": today.isoformat(), "seed": seed, "physios": len(w.physios),
        "patients": len(w.patients), "appointments": len(a),
        "raw_as_of": raw_as_of.isoformat(), "raw_appointments": raw["appointments"],
        "raw_payments": raw["payments"], "payments": len(w.payments),
        "no_show_rate": round(float((past["outcome"] == 1).mean()), 4) if len(past) else 0.0,
        "late_cancel_rate": round(float((past["outcome"] == 2).mean()), 4) if len(past) else 0.0,
        "early_cancel_rate": round(float((past["outcome"] == 3).mean()), 4) if len(past) else 0.0,
        "same_day_booking_share": round(float((lead_h < 12).mean()), 4),
        "past_appointments": len(past), **calls,
        "raw_dir": str(raw_dir), "daily_dir": str(data_dir / "daily"),
        "drops": f"{drops[0]} .. {drops[-1]}" if drops else "none",
    }
