"""Features of the cancellation-risk model: hand-computed values, the target, and the leakage proof."""
from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from clinic_lib.modeling import features as F

from synthetic import load_synthetic, synthetic_frames

TZ = ZoneInfo("Europe/Berlin")


def _appts(rows):
    """rows: (id, patient, local 'YYYY-MM-DD HH:MM', minutes, booked local, status, canceled local|None)."""
    out = []
    for aid, pid, start, minutes, booked, status, canceled in rows:
        s = pd.Timestamp(start).tz_localize(TZ)
        out.append({"appointment_id": aid, "patient_id": pid, "physio_id": 1,
                    "appt_start": s.tz_convert("UTC"), "appt_end": (s + pd.Timedelta(minutes=minutes)).tz_convert("UTC"),
                    "booked_at": pd.Timestamp(booked).tz_localize(TZ).tz_convert("UTC"), "status": status,
                    "canceled_at": pd.Timestamp(canceled).tz_localize(TZ).tz_convert("UTC") if canceled else pd.NaT,
                    "is_first_visit": 0, "local_date": s.date().isoformat()})
    a = pd.DataFrame(out)
    a["canceled_at"] = pd.to_datetime(a["canceled_at"], utc=True)
    a["physio_id"] = a["physio_id"].astype("Int64")
    return a


PATIENTS = pd.DataFrame({"patient_id": [1, 2], "phone": ["+49301", None], "email": ["a@x.org", None],
                         "consent_form_received": [1, 0], "reminder_consent": [1, 1],
                         "date_of_birth": ["2000-03-30", None], "gender": ["F", None]})


def _hand_frame():
    return _appts([
        (1, 1, "2026-03-02 09:00", 45, "2026-02-20 10:00", "completed", None),
        (2, 1, "2026-03-09 09:00", 45, "2026-03-02 10:00", "no_show", None),
        (3, 1, "2026-03-16 09:00", 45, "2026-03-09 10:00", "canceled", "2026-03-16 07:00"),   # late (2 h)
        (4, 1, "2026-03-23 09:00", 45, "2026-03-16 10:00", "canceled", "2026-03-19 09:00"),   # early (4 days)
        (5, 1, "2026-03-28 23:00", 60, "2026-03-20 10:00", "completed", None),  # ends 00:00 on the 29th
        (6, 1, "2026-03-29 09:00", 30, "2026-03-27 09:00", "booked", None),     # the target (DST day)
        (7, 1, "2026-03-29 08:00", 30, "2026-03-25 09:00", "no_show", None),    # same-day sibling
        (8, 1, "2026-03-29 15:00", 30, "2026-03-29 07:00", "completed", None),  # sibling booked that morning
        (9, 2, "2026-03-29 10:00", 30, "2026-03-29 08:00", "booked", None),     # same-day booking, new patient
        (10, 1, "2026-03-27 10:00", 30, "2026-03-20 10:00", "canceled", None),  # no canceled_at: late
    ])


def test_hand_computed_features_on_a_dst_day():
    a = _hand_frame()
    X = F.build_features(a, a, PATIENTS, TZ, 24.0).set_index(a["appointment_id"])
    r = X.loc[6]
    # History before the cutoff 2026-03-29 00:00 CET = 2026-03-28T23:00Z: appointments 1, 2, 3, 4, 10.
    # Appointment 5 ends exactly at the cutoff (not strictly before): not counted. 7 and 8 are same-day.
    assert r["prior_completed"] == 1 and r["prior_no_show"] == 1
    assert r["prior_late_cancel"] == 2 and r["prior_early_cancel"] == 1
    assert r["prior_n"] == 4
    assert r["prior_fail_rate"] == pytest.approx((3 + 0.2) / 5)
    assert r["prior_no_show_rate"] == pytest.approx((1 + 0.2) / 5)
    assert r["last_failed"] == 1  # 10 (late cancel on the 27th) is the last finished one
    # Last visit: appointment 1 ended 2026-03-02 09:45 CET; start 2026-03-29 09:00 CEST (07:00Z).
    expected = (pd.Timestamp("2026-03-29 07:00", tz="UTC") - pd.Timestamp("2026-03-02 08:45", tz="UTC")).total_seconds() / 86400
    assert r["days_since_last_visit"] == pytest.approx(expected)
    assert r["hour"] == 9.0 and r["weekday"] == "6" and r["length_min"] == 30
    assert r["lead_days"] == pytest.approx(2 - 1 / 24)  # 27th 09:00 CET -> 29th 09:00 CEST is 47 h
    assert r["same_day_booking"] == 0
    assert r["same_day_count"] == 2  # itself and 7; 8 was booked after the cutoff
    assert r["age_band"] == "18-29" and r["age_years"] == 25  # birthday on the 30th: still 25
    assert r["reminder_reachable"] == 1 and r["has_phone"] == 1 and r["consent_form"] == 1
    assert r["physio"] == "p1" and r["has_history"] == 1
    n = X.loc[9]
    assert n["prior_n"] == 0 and n["has_history"] == 0 and n["days_since_last_visit"] == F.DAYS_SINCE_CAP
    assert n["prior_fail_rate"] == pytest.approx(0.2)
    assert n["same_day_booking"] == 1 and n["same_day_count"] == 1
    assert n["age_band"] == "unknown" and n["age_years"] == -1
    assert n["reminder_reachable"] == 0 and n["has_phone"] == 0


def test_target_and_eligibility():
    a = _hand_frame()
    y, eligible = F.label(a, 24.0)
    y, eligible = y.set_axis(a["appointment_id"]), eligible.set_axis(a["appointment_id"])
    assert y[[1, 2, 3, 4, 7, 10]].tolist() == [0, 1, 1, 0, 1, 1]
    assert eligible[[1, 2, 3, 4, 6, 10]].tolist() == [True, True, True, False, False, True]
    # A 6 h window makes the 2 h cancellation still late and a 1 h window makes it early.
    assert F.label(a, 1.0)[0].iloc[2] == 0 and not F.label(a, 1.0)[1].iloc[2]


def _mutate_from(a: pd.DataFrame, day: str, seed: int) -> pd.DataFrame:
    """Every appointment on or after ``day`` gets a random outcome (and cancellation time)."""
    rng = np.random.default_rng(seed)
    b = a.copy()
    later = (b["local_date"] >= day).to_numpy()
    n = int(later.sum())
    status = rng.choice(["completed", "no_show", "canceled", "booked"], n)
    b.loc[later, "status"] = status
    hours = rng.uniform(0.5, 200, n)
    canceled = (b.loc[later, "appt_start"] - pd.to_timedelta(hours, unit="h")).where(status == "canceled")
    new = b["canceled_at"].astype("datetime64[ns, UTC]").copy()
    new[later] = canceled.astype("datetime64[ns, UTC]").to_numpy()
    b["canceled_at"] = new
    return b


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_leakage_outcomes_on_or_after_the_cutoff_change_no_feature(seed):
    frames = synthetic_frames(seed=seed, patients=120, days=60, end=dt.date(2026, 3, 20), tz=TZ)
    a = F._normalise_appointments(frames["appointments"])
    p = F._normalise_patients(frames["patients"])
    X = F.build_features(a, a, p, TZ, 24.0)
    days = sorted(a["local_date"].unique())
    for day in days[5::9] + days[-1:]:
        b = _mutate_from(a, day, seed)
        assert (b["status"] != a["status"]).any()
        Xb = F.build_features(b, b, p, TZ, 24.0)
        on_day = (a["local_date"] == day).to_numpy()
        pd.testing.assert_frame_equal(X[on_day], Xb[on_day])
        # ... and for every earlier day too.
        before = (a["local_date"] < day).to_numpy()
        pd.testing.assert_frame_equal(X[before], Xb[before])


def test_history_passed_in_beyond_the_cutoff_is_ignored():
    """Scoring passes only earlier history; training passes everything: the same features."""
    frames = synthetic_frames(seed=4, patients=80, days=40, tz=TZ)
    a = F._normalise_appointments(frames["appointments"])
    p = F._normalise_patients(frames["patients"])
    day = sorted(a["local_date"].unique())[-3]
    targets = a[a["local_date"] == day]
    cutoff = F.day_cutoffs(pd.Series([day]), TZ).iloc[0]
    earlier = a[a["patient_id"].isin(targets["patient_id"]) & (a["appt_start"] < cutoff)]
    full = F.build_features(targets, a, p, TZ, 24.0)
    indexed = F.build_features(targets, earlier, p, TZ, 24.0)
    pd.testing.assert_frame_equal(full, indexed)


def test_features_read_from_the_database_match(engine):
    """SQLite and Postgres give the same features as the frames written into them."""
    frames = load_synthetic(engine, seed=5, patients=60, days=30, tz=TZ)
    with engine.connect() as conn:
        a = F.read_appointments(conn)
        p = F.read_patients(conn)
    a = a.sort_values("appointment_id").reset_index(drop=True)
    X_db = F.build_features(a, a, p, TZ, 24.0)
    a0 = F._normalise_appointments(frames["appointments"]).sort_values("appointment_id").reset_index(drop=True)
    X_frames = F.build_features(a0, a0, F._normalise_patients(frames["patients"]), TZ, 24.0)
    pd.testing.assert_frame_equal(X_db, X_frames)
    assert list(X_db.columns) == F.FEATURES
