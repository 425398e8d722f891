"""Small synthetic clinics for the model's tests: frames in the database's form with planted
effects on the failure risk (the demo generator, clinic_lib/ingest/demo.py, is the realistic one)."""
from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from clinic_lib.core import db
from clinic_lib.core.timeutil import series_local_date, series_to_utc_text
from clinic_lib.ingest.refresh import bulk_insert
from clinic_lib.modeling.features import with_all_columns


def synthetic_frames(seed: int = 0, patients: int = 300, days: int = 120, end: dt.date | None = None,
                     tz: ZoneInfo | None = None, physios: int = 3, booked_days: int = 0) -> dict[str, pd.DataFrame]:
    """Small frames in the database's form with planted effects on the failure risk.

    Effects: long lead time, young adults, Mondays, patients with a personal propensity (so prior
    history predicts), no reminder reachable. Appointments on or after ``end`` stay ``booked``;
    ``booked_days`` extra days after ``end`` hold booked appointments only.
    """
    tz = tz or ZoneInfo("Europe/Berlin")
    end = end or dt.date(2026, 3, 20)
    rng = np.random.default_rng(seed)
    pid = np.arange(1, patients + 1)
    propensity = rng.normal(0, 1.0, patients)
    age = rng.integers(5, 90, patients)
    dob = [(end - dt.timedelta(days=int(a * 365.25 + rng.integers(0, 300)))).isoformat() for a in age]
    dob = [d if rng.random() > 0.1 else None for d in dob]
    reach = rng.random(patients) < 0.6
    pats = pd.DataFrame({
        "patient_id": pid, "first_name": "Pat", "last_name": [f"Synth{i}" for i in pid],
        "phone": "+4930123456", "email": np.where(reach, [f"p{i}@example.org" for i in pid], None),
        "consent_form_received": 1, "reminder_consent": reach.astype(int), "date_of_birth": dob,
        "gender": rng.choice(["F", "M"], patients),
        "created_at": "2020-01-01T00:00:00+00:00"})
    rows = []
    start_day = end - dt.timedelta(days=days)
    n_days = days + booked_days
    per_day = max(4, patients // 10)
    aid = 1
    for k in range(n_days):
        day = start_day + dt.timedelta(days=k)
        if day.weekday() == 6:
            continue
        who = rng.choice(pid, per_day, replace=False)
        for j, p in enumerate(who):
            hour = 8 + (j % 10)
            local = dt.datetime.combine(day, dt.time(hour, 0), tzinfo=tz)
            lead = float(rng.choice([0.2, 1, 3, 7, 14, 30, 60]))
            booked = local - dt.timedelta(days=lead)
            a = age[p - 1]
            logit = (-2.2 + 0.9 * propensity[p - 1] + 0.5 * np.log1p(lead) - 0.7 * reach[p - 1]
                     + (0.6 if 18 <= a < 30 else 0) + (0.5 if day.weekday() == 0 else 0))
            prob = 1 / (1 + np.exp(-logit))
            if day >= end:
                status, canceled = "booked", None
            else:
                u = rng.random()
                if u < prob * 0.6:
                    status, canceled = "no_show", None
                elif u < prob:
                    status, canceled = "canceled", local - dt.timedelta(hours=float(rng.uniform(1, 20)))
                elif u < prob + 0.05:
                    status, canceled = "canceled", local - dt.timedelta(hours=float(rng.uniform(30, 200)))
                else:
                    status, canceled = "completed", None
            if canceled is not None and canceled < booked:
                canceled = booked
            rows.append((aid, int(p), int(1 + (j % physios)), local, local + dt.timedelta(minutes=45),
                         booked, status, canceled))
            aid += 1
    a = pd.DataFrame(rows, columns=["appointment_id", "patient_id", "physio_id", "s", "e", "b", "status", "c"])
    s = pd.to_datetime(a["s"], utc=True)
    a["appt_start"] = series_to_utc_text(s)
    a["appt_end"] = series_to_utc_text(pd.to_datetime(a["e"], utc=True))
    a["booked_at"] = series_to_utc_text(pd.to_datetime(a["b"], utc=True))
    a["canceled_at"] = series_to_utc_text(pd.to_datetime(a["c"], utc=True))
    a["price_estimate_cents"] = 6500
    first = ~a.sort_values(["patient_id", "s"]).duplicated("patient_id")
    a["is_first_visit"] = first.reindex(a.index).astype(int)
    a["local_date"] = series_local_date(s, tz)
    a = a.drop(columns=["s", "e", "b", "c"])
    ph = pd.DataFrame({"physio_id": np.arange(1, physios + 1), "full_name": [f"Physio {i}" for i in range(1, physios + 1)],
                       "active": 1})
    return {"physios": ph, "patients": pats, "appointments": a}


def load_synthetic(engine, **kwargs) -> dict[str, pd.DataFrame]:
    """Write ``synthetic_frames(**kwargs)`` into an empty, migrated database (one transaction)."""
    frames = synthetic_frames(**kwargs)
    with db.begin_write(engine) as conn:
        for table in ("physios", "patients", "appointments"):
            bulk_insert(conn, table, with_all_columns(table, frames[table]))
    return frames
