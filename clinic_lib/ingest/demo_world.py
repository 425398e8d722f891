"""The demo clinic's world: patients, series of appointments, bookings and their outcomes with the planted effects, payments, the evening lists and calls (see demo.py for the whole story)."""
from __future__ import annotations

import datetime as dt
import heapq
from dataclasses import dataclass

import numpy as np
import pandas as pd

from clinic_lib.core.config import get_settings
from clinic_lib.ingest.demo_calendar import (
    _ASCII,
    DAY_S,
    EMAIL_DOMAINS,
    FIRST_NAMES_F,
    FIRST_NAMES_M,
    LAST_NAMES,
    _closed_days,
    _daytime_between,
    _dn,
    _localize,
    _patterns,
    _physios,
    _slack_probability,
    _to_local,
    _weekday,
)
from clinic_lib.ingest.drop_format import COLUMNS

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
