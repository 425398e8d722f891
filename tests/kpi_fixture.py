"""A tiny clinic with hand-computed KPIs (used by test_kpis.py and the browser test).

Two physios and one who left, eight patients, the week of the spring DST change in Europe/Berlin
(Sunday 2026-03-29: 02:00 -> 03:00, a 23 h day) plus one autumn case (2026-10-25, 25 h).

Roster (local wall-clock): physio 1 "Anna Alt": Monday 08:00-12:00 + 13:00-17:00 (480 min),
Sunday 08:00-12:00 (240); physio 2 "Ben Berg": Saturday 09:00-13:00 (240), Sunday 10:00-14:00 (240);
physio 3 "Cleo Clausen" (left, active 0): Monday 08:00-12:00 up to 2026-02-28 only, so no roster
in March (a roster without history would add her 240 minutes to every Monday after).

Appointments (local times; id: patient, start-end, status, price, booked_at, notes)
physio 1
 100 p2 2026-02-02 09:00-10:00 +01 completed 50.00 unpaid            (age 87 d on 04-30: 61-90)
 108 p7 2026-01-05 09:00-10:00 +01 completed 45.00 unpaid            (age 115 d: 90+)
 101 p1 2026-03-29 09:00-10:00 +02 completed 60.00 paid 60 on 03-29   (p1's first visit)
 102 p2 2026-03-29 10:00-10:45 +02 completed 80.00 paid 30 on 03-29   (p2 not new: visit 100)
 103 p3 2026-03-29 11:00-12:00 +02 canceled at 2026-03-28 10:30 +01 = 23.5 h real before (late;
                                  on the wall clock 24.5 h: a naive rule would say early)
 104 p4 2026-03-29 00:30-01:15 +01 no_show (UTC date 03-28, local date 03-29), 45 min
 105 p5 2026-03-30 09:00-10:00 +02 canceled at 2026-03-27 09:00 +01 (72 h before: early)
 106 p1 2026-03-30 10:00-11:00 +02 completed 60.00 unpaid, booked 2026-03-29 10:05 +02
                                  (5 min after visit 101 ended: visit 101 is rebooked)
 107 p5 2026-03-30 14:00-15:00 +02 completed 60.00 unpaid, booked 2026-03-30 08:00 +02
 301 p7 2026-10-25 02:30 +02 - 02:30 +01 completed (60 real minutes across the fall-back)
 302 p7 2026-10-25 10:00 +01 canceled at 2026-10-24 10:30 +02 = 24.5 h real before (early)
physio 2
 201 p6 2026-03-28 09:00-10:00 +01 completed 70.00 unpaid (p6's first visit)
 202 p3 2026-03-29 10:00-11:00 +02 completed 70.00 paid 70 on 2026-05-05 (after as_of 04-30)
 203 p2 2026-03-28 11:00-12:00 +01 no_show, no price
 204 p4 2026-03-29 12:00-12:30 +02 booked (never updated), 30 min
 205 p3 2026-04-05 10:00-11:00 +02 canceled 2026-03-29 20:00 +02 (booked 03-29 11:30: canceled
                                  within 24 h of visit 202's end: does not rebook 202)
 206 p3 2026-04-12 10:00-11:00 +02 booked 2026-03-30 12:00 +02 (25 h after 202 ended: too late)
 207 p6 2026-03-31 09:00-10:00 +02 completed 70.00 unpaid, booked 2026-03-28 10:00 +01
                                  (= the moment visit 201 ended: 201 is rebooked; age 30: 0-30)
physio 3
 401 p8 2026-02-23 09:00-10:00 +01 no_show, no price (her last appointment)
Risk scores: 106 high (day 03-29) then low (day 03-30): latest = low; 107 none.
"""
from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pandas as pd
import sqlalchemy as sa

from clinic_lib.core import db
from clinic_lib.ingest.refresh import db_columns, upsert

TZ = ZoneInfo("Europe/Berlin")
AS_OF = "2026-04-30"
RANGE = ("2026-03-28", "2026-03-30")


def _utc(local: str | None) -> str | None:
    if local is None:
        return None
    return dt.datetime.fromisoformat(local).astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def _local_date(local: str) -> str:
    return dt.datetime.fromisoformat(local).astimezone(TZ).date().isoformat()


# id, patient, physio, start, end, booked_at, status, canceled_at, price (euros)
APPOINTMENTS = [
    (100, 2, 1, "2026-02-02T09:00:00+01:00", "2026-02-02T10:00:00+01:00", "2026-01-20T09:00:00+01:00", "completed", None, 50),
    (108, 7, 1, "2026-01-05T09:00:00+01:00", "2026-01-05T10:00:00+01:00", "2025-12-20T09:00:00+01:00", "completed", None, 45),
    (101, 1, 1, "2026-03-29T09:00:00+02:00", "2026-03-29T10:00:00+02:00", "2026-03-20T10:00:00+01:00", "completed", None, 60),
    (102, 2, 1, "2026-03-29T10:00:00+02:00", "2026-03-29T10:45:00+02:00", "2026-03-02T10:00:00+01:00", "completed", None, 80),
    (103, 3, 1, "2026-03-29T11:00:00+02:00", "2026-03-29T12:00:00+02:00", "2026-03-10T10:00:00+01:00", "canceled", "2026-03-28T10:30:00+01:00", 60),
    (104, 4, 1, "2026-03-29T00:30:00+01:00", "2026-03-29T01:15:00+01:00", "2026-03-15T12:00:00+01:00", "no_show", None, 60),
    (105, 5, 1, "2026-03-30T09:00:00+02:00", "2026-03-30T10:00:00+02:00", "2026-03-20T09:00:00+01:00", "canceled", "2026-03-27T09:00:00+01:00", 60),
    (106, 1, 1, "2026-03-30T10:00:00+02:00", "2026-03-30T11:00:00+02:00", "2026-03-29T10:05:00+02:00", "completed", None, 60),
    (107, 5, 1, "2026-03-30T14:00:00+02:00", "2026-03-30T15:00:00+02:00", "2026-03-30T08:00:00+02:00", "completed", None, 60),
    (301, 7, 1, "2026-10-25T02:30:00+02:00", "2026-10-25T02:30:00+01:00", "2026-10-01T09:00:00+02:00", "completed", None, None),
    (302, 7, 1, "2026-10-25T10:00:00+01:00", "2026-10-25T11:00:00+01:00", "2026-10-01T09:00:00+02:00", "canceled", "2026-10-24T10:30:00+02:00", 60),
    (201, 6, 2, "2026-03-28T09:00:00+01:00", "2026-03-28T10:00:00+01:00", "2026-03-01T09:00:00+01:00", "completed", None, 70),
    (202, 3, 2, "2026-03-29T10:00:00+02:00", "2026-03-29T11:00:00+02:00", "2026-03-25T10:00:00+01:00", "completed", None, 70),
    (203, 2, 2, "2026-03-28T11:00:00+01:00", "2026-03-28T12:00:00+01:00", "2026-03-20T09:00:00+01:00", "no_show", None, None),
    (204, 4, 2, "2026-03-29T12:00:00+02:00", "2026-03-29T12:30:00+02:00", "2026-03-21T09:00:00+01:00", "booked", None, 40),
    (205, 3, 2, "2026-04-05T10:00:00+02:00", "2026-04-05T11:00:00+02:00", "2026-03-29T11:30:00+02:00", "canceled", "2026-03-29T20:00:00+02:00", 70),
    (206, 3, 2, "2026-04-12T10:00:00+02:00", "2026-04-12T11:00:00+02:00", "2026-03-30T12:00:00+02:00", "booked", None, 70),
    (207, 6, 2, "2026-03-31T09:00:00+02:00", "2026-03-31T10:00:00+02:00", "2026-03-28T10:00:00+01:00", "completed", None, 70),
    (401, 8, 3, "2026-02-23T09:00:00+01:00", "2026-02-23T10:00:00+01:00", "2026-02-16T09:00:00+01:00", "no_show", None, None),
]
PAYMENTS = [  # id, appointment, euros, paid_at
    (1, 101, 60, "2026-03-29T10:00:00+02:00"),
    (2, 102, 30, "2026-03-29T10:50:00+02:00"),
    (3, 202, 70, "2026-05-05T10:00:00+02:00"),
]
ROSTER = [(1, 0, "08:00", "12:00", None), (1, 0, "13:00", "17:00", None), (1, 6, "08:00", "12:00", None),
          (2, 5, "09:00", "13:00", None), (2, 6, "10:00", "14:00", None), (3, 0, "08:00", "12:00", "2026-02-28")]
PHYSIOS = [(1, "Anna Alt", 1), (2, "Ben Berg", 1), (3, "Cleo Clausen", 0)]


def load(engine: sa.Engine) -> None:
    """Insert the fixture (one transaction) into a migrated, empty database."""
    created = "2025-12-01T09:00:00+00:00"
    patients = pd.DataFrame({
        "patient_id": range(1, 9), "first_name": [f"P{i}" for i in range(1, 9)],
        "last_name": ["Test"] * 8, "phone": ["+4930123456"] * 8, "email": [None] * 8,
        "consent_form_received": [1] * 8, "reminder_consent": [0] * 8, "date_of_birth": [None] * 8,
        "gender": [None] * 8, "created_at": [created] * 8})
    physios = pd.DataFrame(PHYSIOS, columns=["physio_id", "full_name", "active"])
    hours = pd.DataFrame(ROSTER, columns=["physio_id", "weekday", "start_time", "end_time", "valid_to"])
    appts = pd.DataFrame([{
        "appointment_id": a, "patient_id": p, "physio_id": ph, "appt_start": _utc(s), "appt_end": _utc(e),
        "booked_at": _utc(b), "status": st, "canceled_at": _utc(c),
        "price_estimate_cents": None if price is None else price * 100, "is_first_visit": 0,
        "local_date": _local_date(s)} for a, p, ph, s, e, b, st, c, price in APPOINTMENTS])
    pays = pd.DataFrame([{"payment_id": i, "appointment_id": a, "amount_cents": eur * 100,
                          "paid_at": _utc(t), "paid_date": _local_date(t), "method": "card"}
                         for i, a, eur, t in PAYMENTS])
    def full(table, frame):  # columns the schema has and the fixture does not set: NULL
        for column in db_columns(table):
            if column not in frame.columns:
                frame[column] = None
        return frame

    with db.begin_write(engine) as conn:
        upsert(conn, "physios", full("physios", physios))
        conn.execute(db.physio_hours.insert(), [{k: (None if pd.isna(v) else v) for k, v in r.items()}
                                                for r in full("physio_hours", hours).to_dict("records")])
        upsert(conn, "patients", full("patients", patients))
        upsert(conn, "appointments", full("appointments", appts))
        upsert(conn, "payments", full("payments", pays))
        mark = "?" if db.is_sqlite(conn) else "%s"
        conn.exec_driver_sql(
            "INSERT INTO risk_scores (day, appointment_id, risk, risk_bucket, model_version, scored_at) "
            f"VALUES ({', '.join([mark] * 6)})",
            [("2026-03-29", 106, 0.4, "high", "m1", "2026-03-29T05:00:00+00:00"),
             ("2026-03-30", 106, 0.05, "low", "m1", "2026-03-30T05:00:00+00:00")])


# The model in practice: scores for the clinic's days (outcomes in the docstring above). Day 03-29: 101, 102,
# 202 attended; 103 canceled 23.5 h before (late: failed); 104 no-show (failed); 204 still booked
# (no outcome). Day 03-30: 106 (the fixture's own score, 0.05) and 107 attended; 105 canceled 72 h
# before (early: no outcome).
MODEL_SCORES = [("2026-03-29", 101, 0.10), ("2026-03-29", 102, 0.20), ("2026-03-29", 103, 0.60),
                ("2026-03-29", 104, 0.30), ("2026-03-29", 202, 0.40), ("2026-03-29", 204, 0.50),
                ("2026-03-30", 105, 0.70), ("2026-03-30", 107, 0.20)]
MODEL_METRICS = {"model_version": "m1", "trained_at": "2026-04-20T18:00:00+00:00",
                 "retrain_reason": "the calibration gap 0.071 is above 0.05",
                 "holdout": {"booked_before_evening": {"roc_auc": 0.71, "base_rate": 0.2, "n": 900}}}


def add_model_history(engine, outputs_dir, metrics=MODEL_METRICS):
    """Scores of two weeks, the chain's monitoring rows for them, and the model's metrics.json."""
    import json

    from clinic_lib.modeling import monitoring
    with db.begin_write(engine) as conn:
        conn.execute(db.risk_scores.insert(), [
            {"day": d, "appointment_id": a, "risk": r, "risk_bucket": "high" if r >= 0.25 else "low",
             "model_version": "m1", "scored_at": f"{d}T05:00:00+00:00"} for d, a, r in MODEL_SCORES])
    update = monitoring.update_monitoring("2026-03-31", engine)
    assert update.recomputed == ["2026-03-29", "2026-03-30"]
    (outputs_dir / "model").mkdir(parents=True, exist_ok=True)
    (outputs_dir / "model" / "metrics.json").write_text(json.dumps(metrics))
