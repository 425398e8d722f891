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
import heapq
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .config import get_settings
from .call_history import CALL_HISTORY_COLUMNS
from .dataset import COLUMNS, write_csv

EPOCH = dt.date(1970, 1, 1)
DAY_S = 86400

EFFECTS = {
    "patient_sd": 1.3, "unreliable_share": 0.15, "unreliable_shift": 2.2,
    "lead_same_day": -2.2, "lead_1_3": -0.8, "lead_4_14": 0.0, "lead_15_30": 0.8, "lead_gt_30": 1.5,
    "first_visit": 0.7, "before_9": 0.4, "from_16": 0.35, "monday": 0.3, "friday": 0.35,
    "age_per_year_over_45": -0.025, "age_under_30": 0.4, "age_unknown": 0.2, "reminders": -0.7,
    "no_phone": 0.4, "no_consent_form": 0.2,
}
# Intercepts (tuned so the rates land in the planted ranges).
B_NO_SHOW, B_LATE, B_EARLY = -2.4, -3.1, -2.35
# The evening lists and calls before Clinic Ops (``_evening_lists``): the list for clinic day D is
# built at 17:00 the day before from the appointments still booked then, the CALL_CAPACITY highest
# planted risks; ``holdout_share`` of it is held out at random; the others are called between 17:15
# and 19:30 if they have a phone, and reached with probability logistic(logit(reach_rate) +
# reach_per_u * u), so the unreliable patients answer less (that is what biases the observational
# comparison). A reached call multiplies the odds of failing (no-show or late cancel) by
# ``odds_ratio``; 1.0 plants no effect.
CALLS = {"holdout_share": 0.2, "reach_rate": 0.7, "reach_per_u": -0.5, "odds_ratio": 0.6,
         "confirmed_share": 0.85, "voicemail_share": 0.4, "list_hour": 17}

FIRST_NAMES_F = ["Anna", "Maria", "Julia", "Laura", "Lena", "Sarah", "Lisa", "Katharina", "Sophie", "Hannah",
                 "Emma", "Mia", "Lea", "Johanna", "Claudia", "Sabine", "Petra", "Monika", "Ursula", "Andrea",
                 "Susanne", "Birgit", "Karin", "Heike", "Nicole", "Stefanie", "Christina", "Franziska", "Jana",
                 "Ingrid", "Renate", "Gisela", "Helga", "Elke", "Martina", "Anja", "Tanja", "Melanie", "Nina",
                 "Marie", "Charlotte", "Greta", "Ida", "Frieda", "Marlene", "Ilse", "Doris", "Gabriele"]
FIRST_NAMES_M = ["Thomas", "Michael", "Andreas", "Stefan", "Peter", "Klaus", "Wolfgang", "Jürgen", "Frank",
                 "Uwe", "Markus", "Christian", "Daniel", "Alexander", "Jan", "Tobias", "Sebastian", "Lukas",
                 "Felix", "Jonas", "Leon", "Paul", "Maximilian", "Florian", "Matthias", "Martin", "Dieter",
                 "Hans", "Günter", "Horst", "Manfred", "Bernd", "Ralf", "Jörg", "Dirk", "Sven", "Tim", "Niklas",
                 "Moritz", "Philipp", "Simon", "David", "Erik", "Karl", "Heinz", "Werner", "Helmut", "Rainer"]
LAST_NAMES = ["Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz",
              "Hoffmann", "Schäfer", "Koch", "Bauer", "Richter", "Klein", "Wolf", "Schröder", "Neumann",
              "Schwarz", "Zimmermann", "Braun", "Krüger", "Hofmann", "Hartmann", "Lange", "Schmitt", "Werner",
              "Schmitz", "Krause", "Meier", "Lehmann", "Schmid", "Schulze", "Maier", "Köhler", "Herrmann",
              "König", "Walter", "Mayer", "Huber", "Kaiser", "Fuchs", "Peters", "Lang", "Scholz", "Möller",
              "Weiß", "Jung", "Hahn", "Schubert", "Vogel", "Friedrich", "Keller", "Günther", "Frank", "Berger",
              "Winkler", "Roth", "Beck", "Lorenz", "Baumann", "Franke", "Albrecht", "Schuster", "Simon",
              "Ludwig", "Böhm", "Winter", "Kraus", "Martin", "Schumacher", "Krämer", "Vogt", "Stein", "Jäger",
              "Otto", "Sommer", "Groß", "Seidel", "Heinrich", "Brandt", "Haas", "Schreiber", "Graf",
              "Schulte", "Dietrich", "Ziegler", "Kuhn", "Kühn", "Pohl", "Engel", "Horn", "Busch", "Bergmann",
              "Thomas", "Voigt", "Sauer", "Arnold", "Wolff", "Pfeiffer", "Yilmaz", "Kaya", "Nowak", "Kowalski"]
EMAIL_DOMAINS = ["web.de", "gmx.de", "gmail.com", "t-online.de", "outlook.de", "posteo.de", "icloud.com"]
_ASCII = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue"})


# --- calendar helpers ---------------------------------------------------------------------------

def _dn(day: dt.date) -> int:
    """Day number (days since 1970-01-01)."""
    return (day - EPOCH).days


def _easter(year: int) -> dt.date:
    a, b, c = year % 19, year // 100, year % 100
    d, e = b // 4, b % 4
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    l_ = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * l_) // 451
    month = (h + l_ - 7 * m + 114) // 31
    day = ((h + l_ - 7 * m + 114) % 31) + 1
    return dt.date(year, month, day)


def _closed_days(first: int, last: int) -> np.ndarray:
    """German public holidays (national ones) plus Dec 24 and Dec 31, as day numbers."""
    out = []
    y0 = (EPOCH + dt.timedelta(days=first)).year
    y1 = (EPOCH + dt.timedelta(days=last)).year
    for y in range(y0, y1 + 1):
        e = _easter(y)
        days = [dt.date(y, 1, 1), e - dt.timedelta(days=2), e + dt.timedelta(days=1), dt.date(y, 5, 1),
                e + dt.timedelta(days=39), e + dt.timedelta(days=50), dt.date(y, 10, 3), dt.date(y, 12, 24),
                dt.date(y, 12, 25), dt.date(y, 12, 26), dt.date(y, 12, 31)]
        out += [_dn(d) for d in days]
    return np.array(sorted(out), dtype=np.int64)


def _weekday(dn):
    return (np.asarray(dn) + 3) % 7  # 1970-01-01 was a Thursday (3)


def _localize(local_s: np.ndarray, tz) -> np.ndarray:
    """Local wall-clock seconds -> UTC seconds (business hours: never in a DST gap)."""
    idx = pd.DatetimeIndex(np.asarray(local_s, dtype="int64").astype("datetime64[s]"))
    utc = idx.tz_localize(tz, ambiguous=True, nonexistent="shift_forward").tz_convert("UTC")
    return utc.tz_localize(None).values.astype("datetime64[s]").astype(np.int64)


def _to_local(utc_s: np.ndarray, tz) -> np.ndarray:
    idx = pd.DatetimeIndex(np.asarray(utc_s, dtype="int64").astype("datetime64[s]")).tz_localize("UTC")
    return idx.tz_convert(tz).tz_localize(None).values.astype("datetime64[s]").astype(np.int64)


def _fmt(utc_s: np.ndarray, tz) -> np.ndarray:
    """UTC seconds -> '2026-03-29T09:00:00+02:00' (clinic-local wall clock with its offset)."""
    utc_s = np.asarray(utc_s, dtype=np.int64)
    if utc_s.size == 0:
        return np.array([], dtype=object)
    local = _to_local(utc_s, tz)
    off = (local - utc_s) // 60
    text = np.datetime_as_string(local.astype("datetime64[s]"), unit="s")
    uniq, inv = np.unique(off, return_inverse=True)
    suffix = np.array([("+" if o >= 0 else "-") + f"{abs(o) // 60:02d}:{abs(o) % 60:02d}" for o in uniq])
    return np.char.add(text.astype("U19"), suffix[inv]).astype(object)


def _money(cents: np.ndarray) -> np.ndarray:
    cents = np.asarray(cents, dtype=np.int64)
    uniq, inv = np.unique(cents, return_inverse=True)
    return np.array([f"{c // 100}.{c % 100:02d}" for c in uniq], dtype=object)[inv] if cents.size else \
        np.array([], dtype=object)


def _uniform_between(rng, lo, hi):
    lo = np.asarray(lo, dtype=np.int64)
    hi = np.asarray(hi, dtype=np.int64)
    return lo + (rng.random(lo.shape) * np.maximum(hi - lo, 0)).astype(np.int64)


def _daytime_between(rng, lo, hi, tz, start_h=7, end_h=21):
    """A random instant in [lo, hi] (UTC s), moved into local daytime when that stays inside."""
    cand = _uniform_between(rng, lo, hi)
    if cand.size == 0:
        return cand
    local = _to_local(cand, tz)
    day = local // DAY_S
    tod = local % DAY_S
    night = (tod < start_h * 3600) | (tod >= end_h * 3600)
    moved_day = np.where(tod >= end_h * 3600, day + 1, day)
    moved_local = moved_day * DAY_S + start_h * 3600 + (rng.random(cand.size) * (end_h - start_h) * 3600).astype(np.int64)
    moved = _localize(moved_local, tz)
    use = night & (moved >= lo) & (moved <= hi)
    return np.where(use, moved, cand)


# --- physios and rosters ------------------------------------------------------------------------

def _physios(rng, n: int):
    """Names, kinds and weekly roster blocks (weekday, start minute, end minute)."""
    kinds = np.where(rng.random(n) < 0.8, "full", "part")
    kinds[0] = "full"
    firsts = rng.permutation(FIRST_NAMES_F + FIRST_NAMES_M)
    lasts = rng.permutation(LAST_NAMES)
    names, rosters = [], []
    for i in range(n):
        names.append(f"{firsts[i % len(firsts)]} {lasts[(i * 7) % len(lasts)]}")
        blocks = []
        if kinds[i] == "full":
            for wd in range(5):
                blocks += [(wd, 480, 720), (wd, 780, 1020)]
            if rng.random() < 0.3:
                blocks.append((5, 480, 720))
        else:
            ndays = 3 + int(rng.random() < 0.5)
            days = np.sort(rng.choice(5, size=ndays, replace=False))
            mornings = rng.random() < 0.5
            for wd in days:
                if mornings:
                    blocks.append((int(wd), 480, 780))
                else:
                    blocks += [(int(wd), 480, 720), (int(wd), 780, 1020)]
            if rng.random() < 0.15:
                blocks.append((5, 480, 720))
        rosters.append(blocks)
    return names, kinds, rosters


def _patterns(rng, length: int, count: int = 64, gap15: float = 0.08, gap30: float = 0.02):
    """Ways to fill a block of ``length`` minutes: (offset, duration) lists on a 15-minute grid."""
    out = []
    sizes = np.array([30, 45, 60])
    probs = np.array([0.58, 0.25, 0.17])
    for _ in range(count):
        t, items = 0, []
        while t < length:
            r = rng.random()
            if r < gap15:
                t += 15
                continue
            if r < gap15 + gap30:
                t += 30
                continue
            fit = sizes[t + sizes <= length]
            if fit.size == 0:
                break
            p = probs[: fit.size] / probs[: fit.size].sum()
            d = int(rng.choice(fit, p=p))
            items.append((t, d))
            t += d
        out.append(items)
    return out


def _slack_probability(days: np.ndarray, d0: int, d1: int) -> np.ndarray:
    """Share of blocks filled loosely: higher in summer and around Christmas, falling over time
    (the practice grows)."""
    date = days.astype("datetime64[D]")
    month = (date.astype("datetime64[M]").astype(np.int64) % 12) + 1
    dom = (date - date.astype("datetime64[M]")).astype(np.int64) + 1
    season = ((month == 7) | (month == 8) | ((month == 12) & (dom >= 15)) | ((month == 1) & (dom <= 6)))
    trend = 0.18 - 0.12 * (days - d0) / max(d1 - d0, 1)
    return np.clip(trend + 0.30 * season, 0, 1)


# --- the world ----------------------------------------------------------------------------------

@dataclass
class World:
    physios: pd.DataFrame          # physio_id, full_name, active
    hours: pd.DataFrame            # physio_id, weekday, start_time, end_time
    patients: pd.DataFrame         # all columns of patients.csv except created_at, + created_s
    appts: pd.DataFrame            # ids, times as UTC seconds, final status, canceled_s (-1 none)
    payments: pd.DataFrame         # payment_id, appointment_id, amount_cents, paid_s, method
    # the simulated evening lists (``_evening_lists``), one row per listed appointment; None without
    calls: pd.DataFrame | None = None


def _series_lengths(rng, n):
    return rng.choice(np.arange(5, 13), size=n, p=[0.08, 0.12, 0.16, 0.17, 0.16, 0.13, 0.10, 0.08])


def build_world(seed: int, today: dt.date, physios: int = 8, patients: int = 3200, days_history: int = 730,
                days_ahead: int = 21, tz=None, calls_until: dt.date | None = None, call_capacity: int = 10,
                call_holdout_share: float = CALLS["holdout_share"],
                call_odds_ratio: float = CALLS["odds_ratio"]) -> World:
    """Simulate every appointment in [today - days_history, today + days_ahead] (see module doc).

    ``calls_until``: the evening lists and calls of every clinic day up to the day after it are
    simulated (``_evening_lists``) and change the outcomes of the listed appointments; None: none.
    """
    tz = tz or get_settings().clinic_tz
    rng = np.random.default_rng(seed)
    n_ph = int(physios)
    d_today = _dn(today)
    d0, d1 = d_today - int(days_history), d_today + int(days_ahead)
    names, kinds, rosters = _physios(rng, n_ph)

    # Leaving physio: one of them (with >= 5) stopped a while before the daily drops start.
    leave = np.full(n_ph, d1 + 1, dtype=np.int64)
    active = np.ones(n_ph, dtype=np.int64)
    if n_ph >= 5:
        j = n_ph - 1
        leave[j] = d_today - max(30, int(days_history) // 4)
        active[j] = 0

    # --- working blocks (physio, day, start, length) ---
    days = np.arange(d0, d1 + 1, dtype=np.int64)
    wd = _weekday(days)
    closed = np.isin(days, _closed_days(d0, d1))
    monday0 = d0 - int(_weekday(d0))
    n_weeks = (d1 - monday0) // 7 + 1
    vacation = rng.random((n_ph, n_weeks)) < 0.07
    # no vacations from this week on: keeps the coming days' lists believable and non-empty
    vacation[:, max(0, (d_today - monday0) // 7):] = False
    b_ph, b_day, b_start, b_len = [], [], [], []
    for p in range(n_ph):
        for (w, s, e) in rosters[p]:
            sel = days[(wd == w) & ~closed & (days < leave[p]) & ~vacation[p, (days - monday0) // 7]]
            b_ph.append(np.full(sel.size, p)); b_day.append(sel)
            b_start.append(np.full(sel.size, s)); b_len.append(np.full(sel.size, e - s))
    b_ph, b_day = np.concatenate(b_ph), np.concatenate(b_day)
    b_start, b_len = np.concatenate(b_start), np.concatenate(b_len)

    # --- slots from fill patterns ---
    s_ph, s_day, s_min, s_dur = [], [], [], []
    slack = rng.random(b_day.size) < _slack_probability(b_day, d0, d1)
    for length in np.unique(b_len):
        tight = _patterns(rng, int(length))
        loose = _patterns(rng, int(length), gap15=0.25, gap30=0.10)
        pats = tight + loose
        counts = np.array([len(p) for p in pats])
        ptr = np.concatenate([[0], np.cumsum(counts)[:-1]])
        flat_off = np.array([o for p in pats for (o, _) in p])
        flat_dur = np.array([d for p in pats for (_, d) in p])
        sel = np.flatnonzero(b_len == length)
        k = rng.integers(0, len(tight), size=sel.size) + len(tight) * slack[sel]
        n_items = counts[k]
        rep = np.repeat(np.arange(sel.size), n_items)
        within = np.arange(n_items.sum()) - np.repeat(np.cumsum(n_items) - n_items, n_items)
        item = ptr[k][rep] + within
        s_ph.append(b_ph[sel][rep]); s_day.append(b_day[sel][rep])
        s_min.append(b_start[sel][rep] + flat_off[item]); s_dur.append(flat_dur[item])
    s_ph, s_day = np.concatenate(s_ph), np.concatenate(s_day)
    s_min, s_dur = np.concatenate(s_min), np.concatenate(s_dur)
    order = np.lexsort((s_min, s_day, s_ph))
    s_ph, s_day, s_min, s_dur = s_ph[order], s_day[order], s_min[order], s_dur[order]
    n_s = s_ph.size

    # --- lanes: the i-th slot of a physio's week ---
    week = (s_day - monday0) // 7
    key = s_ph * n_weeks + week
    new_grp = np.r_[True, key[1:] != key[:-1]]
    grp_start = np.flatnonzero(new_grp)
    rank = np.arange(n_s) - np.repeat(grp_start, np.diff(np.r_[grp_start, n_s]))
    lane_key = s_ph * 1000 + rank
    lorder = np.lexsort((week, lane_key))  # by lane, then week
    lk = lane_key[lorder]
    lane_new = np.r_[True, lk[1:] != lk[:-1]]
    lane_id = np.cumsum(lane_new) - 1
    lane_first = np.flatnonzero(lane_new)
    lane_n = np.diff(np.r_[lane_first, n_s])
    legacy_lane = week[lorder][lane_first] <= 1

    # series cuts per lane
    n_lanes = lane_first.size
    per = lane_n // 5 + 2
    lens = _series_lengths(rng, int(per.sum()))
    lane_of_len = np.repeat(np.arange(n_lanes), per)
    first_of_lane = np.r_[True, lane_of_len[1:] != lane_of_len[:-1]]
    # legacy lanes: the first series is already under way (partially consumed)
    partial = np.floor(rng.random(lens.size) * lens).astype(np.int64) + 1
    lens = np.where(first_of_lane & legacy_lane[lane_of_len], partial, lens)
    csum = pd.Series(lens).groupby(lane_of_len).cumsum().to_numpy()
    cut_ok = csum < lane_n[lane_of_len]
    cut_lane, cut_pos = lane_of_len[cut_ok], csum[cut_ok]
    # move a cut to the next 60-minute slot of the lane if one is within 3 visits
    dur_l = s_dur[lorder]
    g = np.arange(n_s)
    cand = np.where(dur_l == 60, g, np.iinfo(np.int64).max)
    nxt = pd.Series(cand[::-1]).groupby(lane_id[::-1]).cummin().to_numpy()[::-1]
    gcut = lane_first[cut_lane] + cut_pos
    moved = nxt[gcut]
    ok = (moved - gcut <= 3) & (moved < lane_first[cut_lane] + lane_n[cut_lane])
    gcut = np.where(ok, moved, gcut)
    is_cut = lane_new.copy()
    is_cut[gcut] = True
    series_of = np.cumsum(is_cut) - 1  # in lane order
    n_series = int(series_of[-1]) + 1
    ser_first = np.flatnonzero(is_cut)
    ser_legacy = legacy_lane[lane_id[ser_first]] & lane_new[ser_first]
    visit_no = np.arange(n_s) - np.repeat(ser_first, np.diff(np.r_[ser_first, n_s]))

    # back to slot arrays in (lane order) -> keep lane order as the entry order
    e_ph, e_day, e_min, e_dur = s_ph[lorder], s_day[lorder], s_min[lorder], s_dur[lorder]
    e_start_local = e_day * DAY_S + e_min * 60
    e_start = _localize(e_start_local, tz)
    e_end = e_start + e_dur * 60
    ser_ph = e_ph[ser_first]
    ser_start = e_start[ser_first]
    ser_end = e_end[np.r_[ser_first[1:], n_s] - 1]

    # --- patients: each physio's own pool, assigned to series in time order ---
    cap = np.array([sum(e - s for (_, s, e) in r) for r in rosters], dtype=float)
    cap = cap * np.clip((leave - d0) / max(d1 - d0, 1), 0.05, 1)
    pool = np.floor(cap / cap.sum() * int(patients)).astype(np.int64)
    pool[: int(patients) - pool.sum()] += 1
    pool_start = np.r_[0, np.cumsum(pool)[:-1]]
    ser_patient = np.empty(n_series, dtype=np.int64)
    ser_new = np.zeros(n_series, dtype=bool)  # a new patient's first series
    extra = int(patients)  # overflow patients beyond the pool get ids from here
    u_series = rng.random(n_series)
    u_pick = rng.random(n_series)
    for p in range(n_ph):
        idx = np.flatnonzero(ser_ph == p)
        idx = idx[np.lexsort((idx, ser_start[idx]))]
        next_new, stop = int(pool_start[p]), int(pool_start[p] + pool[p])
        active_heap: list = []
        available: list = []
        total = idx.size
        for count, s in enumerate(idx.tolist()):
            st = int(ser_start[s])
            while active_heap and active_heap[0][0] < st:
                available.append(heapq.heappop(active_heap)[1])
            left_new = stop - next_new
            left_series = total - count
            p_new = 1.0 if not available else min(1.0, max(0.35, left_new / max(left_series, 1) * 1.1))
            if ser_legacy[s] or (left_new > 0 and u_series[s] < p_new) or not available:
                if left_new > 0:
                    pid = next_new
                    next_new += 1
                else:
                    pid = extra
                    extra += 1
                ser_new[s] = not ser_legacy[s]
            else:
                j = int(u_pick[s] * len(available))
                available[j], available[-1] = available[-1], available[j]
                pid = available.pop()
            ser_patient[s] = pid
            heapq.heappush(active_heap, (int(ser_end[s]), pid))
    n_pat = extra
    home = np.empty(n_pat, dtype=np.int64)
    for p in range(n_ph):
        home[pool_start[p]: pool_start[p] + pool[p]] = p
    if n_pat > int(patients):  # overflow patients: home physio from their first series
        over_ser = ser_patient >= int(patients)
        home[ser_patient[over_ser]] = ser_ph[over_ser]

    e_patient = np.repeat(ser_patient, np.diff(np.r_[ser_first, n_s]))
    e_series = series_of
    e_first = (visit_no == 0) & ser_new[e_series]

    # First visits take 60 minutes: a first visit on a shorter slot swaps slots with a follow-up
    # on a 60-minute slot of the same physio and week (both keep one visit that week).
    wk = e_ph * n_weeks + (e_day - monday0) // 7
    need = np.flatnonzero(e_first & (e_dur < 60))
    give = np.flatnonzero(~e_first & (e_dur == 60))
    need = need[np.lexsort((need, wk[need]))]
    give = give[np.lexsort((rng.random(give.size), wk[give]))]
    rank_n = pd.Series(wk[need]).groupby(wk[need]).cumcount().to_numpy()
    rank_g = pd.Series(wk[give]).groupby(wk[give]).cumcount().to_numpy()
    pairs = pd.DataFrame({"wk": wk[need], "r": rank_n, "a": need}).merge(
        pd.DataFrame({"wk": wk[give], "r": rank_g, "b": give}), on=["wk", "r"])
    pa, pb = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    for arr in (e_day, e_min, e_dur):
        arr[pa], arr[pb] = arr[pb].copy(), arr[pa].copy()
    e_start = _localize(e_day * DAY_S + e_min * 60, tz)
    e_end = e_start + e_dur * 60
    ser_start = e_start[ser_first]

    # --- patient attributes ---
    gender = np.where(rng.random(n_pat) < 0.55, "F", "M")
    fi = rng.integers(0, 10 ** 6, n_pat)
    first = np.where(gender == "F", np.array(FIRST_NAMES_F, dtype=object)[fi % len(FIRST_NAMES_F)],
                     np.array(FIRST_NAMES_M, dtype=object)[fi % len(FIRST_NAMES_M)])
    last = np.array(LAST_NAMES, dtype=object)[rng.integers(0, len(LAST_NAMES), n_pat)]
    age = 18 + rng.beta(2.0, 2.2, n_pat) * 72
    dob_days = d_today - np.floor(age * 365.25).astype(np.int64) - rng.integers(0, 365, n_pat)
    dob_known = rng.random(n_pat) >= 0.10
    phone_known = rng.random(n_pat) >= 0.08
    email_known = rng.random(n_pat) >= 0.15
    consent_form = (rng.random(n_pat) >= 0.07).astype(np.int64)
    reminder_consent = (rng.random(n_pat) >= 0.20).astype(np.int64)
    mobile = rng.choice(np.array(["151", "152", "157", "160", "162", "170", "171", "172", "173", "175",
                                  "176", "177", "178", "179"]), n_pat)
    number = rng.integers(1_000_000, 99_999_999, n_pat)
    phone = np.char.add(np.char.add("+49", mobile), number.astype(str)).astype(object)
    dom = np.array(EMAIL_DOMAINS, dtype=object)[rng.integers(0, len(EMAIL_DOMAINS), n_pat)]
    sep = np.where(rng.random(n_pat) < 0.6, ".", "_")
    suffix = np.where(rng.random(n_pat) < 0.4, rng.integers(1, 99, n_pat).astype(str), "")
    uniq_f = {n: n.translate(_ASCII).lower() for n in FIRST_NAMES_F + FIRST_NAMES_M}
    uniq_l = {n: n.translate(_ASCII).lower() for n in LAST_NAMES}
    email = (pd.Series(first).map(uniq_f) + pd.Series(sep) + pd.Series(last).map(uniq_l)
             + pd.Series(suffix) + "@" + pd.Series(dom)).to_numpy(dtype=object)
    # persistent unreliability: logit-normal with a heavy upper tail (a minority of chronic no-showers)
    unreliable = rng.random(n_pat) < EFFECTS["unreliable_share"]
    u_patient = (rng.normal(0.0, EFFECTS["patient_sd"], n_pat)
                 + EFFECTS["unreliable_shift"] * (unreliable - EFFECTS["unreliable_share"]))
    reminders = (reminder_consent == 1) & email_known

    # --- bookings ---
    n_e = n_s
    r = rng.random(n_e)
    r2 = rng.random(n_e)
    lead_first = np.where(r < 0.12, 0, np.where(r < 0.80, 1 + np.floor(r2 ** 1.3 * 14), 15 + np.floor(r2 * 31)))
    lead_follow = np.where(r < 0.04, 0, np.where(
        r < 0.70, np.where(r2 < 0.55, 6 + np.floor(rng.random(n_e) * 3), 1 + np.floor(rng.random(n_e) * 14)),
        15 + np.floor(r2 ** 1.4 * 46)))
    lead = np.where(e_first, lead_first, lead_follow).astype(np.int64)
    e_booked = _booking_times(rng, e_day, e_min, lead, tz)
    # follow-ups are never booked before the series' first booking
    ser_booked = e_booked[ser_first]
    floor_b = ser_booked[e_series] + 60 * (1 + visit_no * 2)
    e_booked = np.where(visit_no > 0, np.minimum(np.maximum(e_booked, floor_b), e_start - 600), e_booked)
    e_fill = np.zeros(n_e, dtype=bool)

    outcome, canceled = _outcomes(rng, e_patient, e_start, e_booked, e_first, e_min, e_day, u_patient,
                                  age, dob_known, reminders, phone_known, consent_form, d_today, tz)
    calls = None
    if calls_until is not None:
        # its own random stream: the world up to the outcomes is the same with or without the calls
        call_rng = np.random.default_rng([seed, 1])
        a_ns, a_late, _ = _logits(e_patient, e_start, e_booked, e_first, e_min, e_day, u_patient, age, dob_known,
                                  reminders, phone_known, consent_form)
        outcome, canceled, calls = _evening_lists(
            call_rng, e_day, e_start, e_booked, outcome, canceled, a_ns, a_late, u_patient[e_patient],
            phone_known[e_patient], d0, _dn(calls_until) + 1, call_capacity, call_holdout_share, call_odds_ratio, tz)

    # --- re-bookings of canceled slots by another patient of the same physio ---
    can = np.flatnonzero(outcome >= 2)
    left_h = (e_start[can] - canceled[can]) / 3600
    p_re = np.where(left_h >= 48, 0.55, np.where(left_h >= 24, 0.35, 0.15))
    window = e_start[can] - 1800 - (canceled[can] + 300)
    re = can[(rng.random(can.size) < p_re) & (window > 0)]
    # who: a random patient of the physio whose care started at least a week before
    pat_first_start = np.full(n_pat, np.iinfo(np.int64).max)
    np.minimum.at(pat_first_start, ser_patient, ser_start)
    f_patient = np.full(re.size, -1, dtype=np.int64)
    u_f = rng.random(re.size)
    for p in range(n_ph):
        mine = np.flatnonzero((home == p) & (pat_first_start < np.iinfo(np.int64).max))
        mine = mine[np.argsort(pat_first_start[mine], kind="stable")]
        sel = np.flatnonzero(e_ph[re] == p)
        if sel.size == 0 or mine.size == 0:
            continue
        n_el = np.searchsorted(pat_first_start[mine], e_start[re[sel]] - 7 * DAY_S)
        pick = np.minimum((u_f[sel] * n_el).astype(np.int64), np.maximum(n_el - 1, 0))
        cand_p = mine[pick]
        same = cand_p == e_patient[re[sel]]
        cand_p = np.where(same, mine[(pick + 1) % np.maximum(n_el, 1)], cand_p)
        f_patient[sel] = np.where((n_el >= 2), cand_p, -1)
    keep = f_patient >= 0
    re, f_patient = re[keep], f_patient[keep]
    f_booked = _daytime_between(rng, canceled[re] + 300, e_start[re] - 1800, tz)
    f_first = np.zeros(re.size, dtype=bool)
    f_out, f_can = _outcomes(rng, f_patient, e_start[re], f_booked, f_first, e_min[re], e_day[re], u_patient,
                             age, dob_known, reminders, phone_known, consent_form, d_today, tz)

    # --- all appointment rows ---
    a_patient = np.r_[e_patient, f_patient]
    a_ph = np.r_[e_ph, e_ph[re]]
    a_start = np.r_[e_start, e_start[re]]
    a_end = np.r_[e_end, e_end[re]]
    a_dur = np.r_[e_dur, e_dur[re]]
    a_booked = np.r_[e_booked, f_booked]
    a_out = np.r_[outcome, f_out]
    a_can = np.r_[canceled, f_can]
    a_first = np.r_[e_first, f_first]
    a_fill = np.r_[e_fill, np.ones(re.size, dtype=bool)]
    price = np.where(a_first, 9000, np.select([a_dur == 30, a_dur == 45], [4500, 6000], 7500))
    order = np.lexsort((a_ph, a_start, a_booked))
    if calls is not None:  # entry i of the simulation is appointment id_of_entry[i]
        id_of_entry = np.empty(order.size, dtype=np.int64)
        id_of_entry[order] = np.arange(1, order.size + 1)
        calls.insert(2, "appointment_id", id_of_entry[calls.pop("entry").to_numpy()])
    appts = pd.DataFrame({
        "appointment_id": np.arange(1, order.size + 1), "patient": a_patient[order],
        "physio_id": a_ph[order] + 1, "start_s": a_start[order], "end_s": a_end[order],
        "booked_s": a_booked[order], "outcome": a_out[order], "canceled_s": a_can[order],
        "price_cents": price[order], "is_first_visit": a_first[order].astype(np.int64),
        "is_fill_in": a_fill[order],
    })

    # --- patients' created_at and ids in order of creation ---
    first_booked = np.full(n_pat, np.iinfo(np.int64).max)
    np.minimum.at(first_booked, appts["patient"].to_numpy(), appts["booked_s"].to_numpy())
    legacy_pat = np.zeros(n_pat, dtype=bool)
    legacy_pat[ser_patient[ser_legacy]] = True
    d0_s = _localize(np.array([d0 * DAY_S + 8 * 3600]), tz)[0]
    created = np.where(first_booked < np.iinfo(np.int64).max,
                       first_booked - 60 * rng.integers(2, 30, n_pat), 0)
    legacy_created = d0_s - rng.integers(1, 3 * 365, n_pat) * DAY_S + rng.integers(0, 9 * 3600, n_pat)
    created = np.where(legacy_pat, np.minimum(created, legacy_created), created)
    never = first_booked == np.iinfo(np.int64).max  # registered, never booked
    loc_days = d0 + rng.integers(0, max(d_today - d0, 1), n_pat)
    never_created = _localize(loc_days * DAY_S + rng.integers(8 * 3600, 18 * 3600, n_pat), tz)
    created = np.where(never, never_created, created)
    porder = np.lexsort((np.arange(n_pat), created))
    new_id = np.empty(n_pat, dtype=np.int64)
    new_id[porder] = np.arange(1, n_pat + 1)
    appts["patient_id"] = new_id[appts["patient"].to_numpy()]
    dob_text = np.datetime_as_string(dob_days.astype("datetime64[D]"))
    pat = pd.DataFrame({
        "patient_id": new_id, "first_name": first, "last_name": last,
        "phone": np.where(phone_known, phone, ""), "email": np.where(email_known, email, ""),
        "consent_form_received": consent_form, "reminder_consent": reminder_consent,
        "date_of_birth": np.where(dob_known, dob_text, ""), "gender": gender, "created_s": created,
        "u": u_patient,
    }).iloc[porder].reset_index(drop=True)

    payments = _payments(rng, appts, tz)
    ph = pd.DataFrame({"physio_id": np.arange(1, n_ph + 1), "full_name": names, "active": active})
    hrs = [(p + 1, w, f"{s // 60:02d}:{s % 60:02d}", f"{e // 60:02d}:{e % 60:02d}")
           for p in range(n_ph) for (w, s, e) in rosters[p]]
    hours = pd.DataFrame(hrs, columns=COLUMNS["physio_hours"]).sort_values(
        ["physio_id", "weekday", "start_time"], kind="stable").reset_index(drop=True)
    return World(ph, hours, pat, appts, payments, calls)


def _evening_lists(rng, day, start, booked, outcome, canceled, a_ns, a_late, u, phone, first_day: int,
                   last_day: int, k: int, share: float, odds_ratio: float, tz):
    """The evening lists of clinic days ``first_day + 1 .. last_day`` (day numbers) and their calls.

    For clinic day D the list is built at CALLS["list_hour"] on D - 1 from the appointments of D
    booked before then and not canceled by then (early cancellations all are: they come more than
    24 h before the start), the ``k`` highest planted risks of failing from then on:
    p0 = (e^a_ns + e^a_late) / (1 + e^a_ns + e^a_late). A listed appointment's outcome is drawn
    again from that three-way logit (completed, no-show, late cancel after the calls), with
    log(odds_ratio) added to both failure scores when its call reached the patient.

    Returns the new outcomes and cancellation instants, and a frame with one row per listed
    appointment: day, rank, entry (its index here), risk (p0), holdout, called, reached,
    call_outcome, built_s, recorded_s (-1: no call), p_fail_held_out (p0), p_fail_to_call (the
    expected failure probability if put on the calls: reach * p1 + (1 - reach) * p0), failed."""
    c = CALLS
    built = _localize((day - 1) * DAY_S + c["list_hour"] * 3600, tz)
    booked_then = (booked < built) & ((canceled < 0) | (canceled >= built))
    cand = np.flatnonzero(booked_then & (day > first_day) & (day <= last_day))
    p0 = 1.0 / (1.0 + np.exp(-np.logaddexp(a_ns[cand], a_late[cand])))
    order = np.lexsort((cand, start[cand], -p0, day[cand]))
    cand, p0 = cand[order], p0[order]
    rank = pd.Series(day[cand]).groupby(day[cand]).cumcount().to_numpy() + 1
    keep = rank <= k
    idx, p0, rank = cand[keep], p0[keep], rank[keep]
    n = idx.size
    holdout = rng.random(n) < share
    called = ~holdout & phone[idx]
    reach_p = 1.0 / (1.0 + np.exp(-(np.log(c["reach_rate"] / (1 - c["reach_rate"])) + c["reach_per_u"] * u[idx])))
    reached = called & (rng.random(n) < reach_p)
    shift = np.where(reached, np.log(odds_ratio), 0.0)
    e_ns, e_late = np.exp(a_ns[idx] + shift), np.exp(a_late[idx] + shift)
    total = 1.0 + e_ns + e_late
    r = rng.random(n)
    new = np.where(r < 1.0 / total, 0, np.where(r < (1.0 + e_ns) / total, 1, 2))
    late = new == 2
    lo = np.maximum.reduce([built[idx] + 3 * 3600, start[idx] - 24 * 3600 + 60, booked[idx] + 60])
    hi = np.maximum(start[idx] - 600, lo + 1)
    can = np.where(late, _daytime_between(rng, lo, hi, tz), -1)
    outcome, canceled = outcome.copy(), canceled.copy()
    outcome[idx] = new
    canceled[idx] = can
    # what the calls would give on average: the truth an analysis of the holdout should find
    e_ns1, e_late1 = np.exp(a_ns[idx] + np.log(odds_ratio)), np.exp(a_late[idx] + np.log(odds_ratio))
    p1 = (e_ns1 + e_late1) / (1.0 + e_ns1 + e_late1)
    p_to_call = np.where(phone[idx], reach_p * p1 + (1 - reach_p) * p0, p0)
    u_word = rng.random(n)
    word = np.where(reached, np.where(u_word < c["confirmed_share"], "confirmed", "reached"),
                    np.where(u_word < c["voicemail_share"], "voicemail", "no_answer"))
    recorded = np.where(called, built[idx] + rng.integers(15 * 60, 150 * 60, n), -1)
    calls = pd.DataFrame({
        "day": np.datetime_as_string(day[idx].astype("datetime64[D]")).astype(object),
        "rank": rank, "entry": idx, "risk": np.round(p0, 4), "holdout": holdout.astype(np.int64),
        "called": called, "reached": reached, "call_outcome": np.where(called, word, ""),
        "built_s": built[idx], "recorded_s": recorded, "p_fail_held_out": p0, "p_fail_to_call": p_to_call,
        "failed": new >= 1})
    return outcome, canceled, calls


def _booking_times(rng, day, start_min, lead, tz):
    """booked_at (UTC s): lead days before, 08:00-18:30 (no Sundays); same-day from 07:00."""
    n = day.size
    bday = day - lead
    sunday = (_weekday(bday) == 6) & (lead > 0)
    bday = np.where(sunday, bday - 1, bday)
    minute = 480 + np.floor(rng.random(n) * 630).astype(np.int64)
    same = lead == 0
    minute = np.where(same, 420 + np.floor(rng.random(n) * np.maximum(start_min - 20 - 420, 1)), minute)
    sec = rng.integers(0, 60, n)
    return _localize(bday * DAY_S + minute * 60 + sec, tz)


def _logits(patient, start, booked, first, start_min, day, u, age, dob_known, reminders, phone_known,
            consent_form):
    """The planted multinomial logit's scores of no-show, late cancel and early cancel (completed: 0)."""
    E = EFFECTS
    lead_h = (start - booked) / 3600.0
    lead_d = lead_h / 24
    lead_eff = np.select([lead_h < 12, lead_d < 4, lead_d < 15, lead_d <= 30],
                         [E["lead_same_day"], E["lead_1_3"], E["lead_4_14"], E["lead_15_30"]], E["lead_gt_30"])
    wd = _weekday(day)
    a = age[patient]
    x = (lead_eff + E["first_visit"] * first + E["before_9"] * (start_min < 540) + E["from_16"] * (start_min >= 960)
         + E["monday"] * (wd == 0) + E["friday"] * (wd == 4)
         + np.where(dob_known[patient], E["age_per_year_over_45"] * np.maximum(a - 45, 0)
                    + E["age_under_30"] * (a < 30), E["age_unknown"])
         + E["reminders"] * reminders[patient] + E["no_phone"] * ~phone_known[patient]
         + E["no_consent_form"] * (consent_form[patient] == 0))
    up = u[patient]
    a_ns = B_NO_SHOW + up + x
    a_late = B_LATE + 0.9 * up + 0.8 * x
    early_lead = np.select([lead_d < 8, lead_d < 15, lead_d <= 30], [0.0, 0.3, 0.6], 0.9)
    a_early = np.where(lead_h > 25, B_EARLY + 0.3 * up + early_lead, -np.inf)
    return a_ns, a_late, a_early


def _outcomes(rng, patient, start, booked, first, start_min, day, u, age, dob_known, reminders,
              phone_known, consent_form, d_today, tz):
    """0 completed, 1 no-show, 2 late cancel (< 24 h), 3 early cancel; and canceled_at (-1 if none)."""
    a_ns, a_late, a_early = _logits(patient, start, booked, first, start_min, day, u, age, dob_known, reminders,
                                    phone_known, consent_form)
    ex = np.exp(np.stack([np.zeros_like(a_ns), a_ns, a_late, a_early]))
    cum = np.cumsum(ex / ex.sum(axis=0), axis=0)
    r = rng.random(start.size)
    out = (r[None, :] > cum[:3]).sum(axis=0)
    canceled = np.full(start.size, -1, dtype=np.int64)
    late = out == 2
    lo = np.maximum(booked + 60, start - 24 * 3600 + 60)
    canceled = np.where(late, _daytime_between(rng, lo, np.maximum(start - 600, lo + 1), tz), canceled)
    early = out == 3
    canceled = np.where(early, _daytime_between(rng, booked + 600, start - 24 * 3600 - 600, tz), canceled)
    canceled = np.minimum(np.where(out >= 2, np.maximum(canceled, booked + 1), -1), np.where(out >= 2, start, -1))
    return out, canceled


def _payments(rng, appts: pd.DataFrame, tz) -> pd.DataFrame:
    done = appts[appts["outcome"] == 0]
    n = len(done)
    r = rng.random(n)
    same = r < 0.80
    later = (r >= 0.80) & (r < 0.95)
    end = done["end_s"].to_numpy()
    amount = done["price_cents"].to_numpy()
    m = rng.random(n)
    same_paid = end + rng.integers(60, 20 * 60, n)
    same_method = np.where(m < 0.65, "card", "cash")
    end_day = _to_local(end, tz) // DAY_S
    pay_day = end_day + rng.integers(3, 61, n)
    pay_day = np.where(_weekday(pay_day) >= 5, pay_day + (7 - _weekday(pay_day)), pay_day)
    later_paid = _localize(pay_day * DAY_S + rng.integers(8 * 3600, 17 * 3600, n), tz)
    later_method = np.where(m < 0.60, "insurance", "transfer")
    split = same & (rng.random(n) < 0.02)
    part = (amount * 0.4 // 100 * 100).astype(np.int64)
    rows = [
        pd.DataFrame({"appointment_id": done["appointment_id"].to_numpy()[same],
                      "amount_cents": np.where(split, part, amount)[same], "paid_s": same_paid[same],
                      "method": same_method[same]}),
        pd.DataFrame({"appointment_id": done["appointment_id"].to_numpy()[later], "amount_cents": amount[later],
                      "paid_s": later_paid[later], "method": later_method[later]}),
        pd.DataFrame({"appointment_id": done["appointment_id"].to_numpy()[split],
                      "amount_cents": (amount - part)[split], "paid_s": later_paid[split],
                      "method": np.full(int(split.sum()), "transfer")}),
    ]
    pay = pd.concat(rows, ignore_index=True)
    pay = pay.sort_values(["paid_s", "appointment_id"], kind="stable").reset_index(drop=True)
    pay.insert(0, "payment_id", np.arange(1, len(pay) + 1))
    return pay


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
        from .errors import CannotRun
        raise CannotRun("demo: physios, patients and days_history must be >= 1, days_ahead and drop_days >= 0")
    if drop_days > days_history:
        from .errors import CannotRun
        raise CannotRun(f"demo: drop_days ({drop_days}) must not exceed days_history ({days_history})")
    if not call_odds_ratio > 0:
        from .errors import CannotRun
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
