"""Hand-written drops for tests: a tiny clinic whose every number can be checked by hand,
and ``rows`` to read back what a test wrote."""
from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from clinic_lib.ingest.drop_format import COLUMNS


def rows(engine, sql, **params) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql), params)]

PHYSIOS = [{"physio_id": 1, "full_name": "Anna Berg", "active": 1},
           {"physio_id": 2, "full_name": "Jonas Keller", "active": 1}]
PATIENTS = [
    {"patient_id": 1, "first_name": "Lena", "last_name": "Vogel", "phone": "+4915112345678",
     "email": "lena@example.org", "consent_form_received": 1, "reminder_consent": 1,
     "date_of_birth": "1980-05-01", "gender": "F", "created_at": "2026-01-05T10:00:00+01:00"},
    {"patient_id": 2, "first_name": "Max", "last_name": "Huber", "phone": "",
     "email": "", "consent_form_received": 0, "reminder_consent": 0,
     "date_of_birth": "", "gender": "M", "created_at": "2026-01-06T10:00:00+01:00"},
]
HOURS = [{"physio_id": p, "weekday": d, "start_time": "08:00", "end_time": "12:00"}
         for p in (1, 2) for d in range(5)] + \
        [{"physio_id": p, "weekday": d, "start_time": "13:00", "end_time": "17:00"}
         for p in (1, 2) for d in range(5)]


def appt(appointment_id, start, end, status="completed", patient_id=1, physio_id=1,
         booked_at="2026-01-07T09:00:00+01:00", canceled_at="", price="60.00", first=0):
    return {"appointment_id": appointment_id, "patient_id": patient_id, "physio_id": physio_id,
            "appt_start": start, "appt_end": end, "booked_at": booked_at, "status": status,
            "canceled_at": canceled_at, "price_estimate": price, "is_first_visit": first}


def pay(payment_id, appointment_id, amount, paid_at, method="card"):
    return {"payment_id": payment_id, "appointment_id": appointment_id, "amount": amount,
            "paid_at": paid_at, "method": method}


def write_table(folder: Path, table: str, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{table}.csv"
    columns = COLUMNS[table]
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join(str(row.get(c, "")) for c in columns))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_drop(folder: Path, appointments=(), payments=(), patients=PATIENTS, physios=PHYSIOS,
               hours=None) -> Path:
    write_table(folder, "patients", list(patients))
    write_table(folder, "physios", list(physios))
    write_table(folder, "appointments", list(appointments))
    write_table(folder, "payments", list(payments))
    if hours is not None:
        write_table(folder, "physio_hours", list(hours))
    return folder


# A regular Tuesday, 2026-02-10 (CET, +01:00).
DAY = "2026-02-10"
DAY_APPOINTMENTS = [
    appt(1, "2026-02-10T09:00:00+01:00", "2026-02-10T09:45:00+01:00", "completed", first=1),
    appt(2, "2026-02-10T10:00:00+01:00", "2026-02-10T10:30:00+01:00", "no_show", patient_id=2),
    appt(3, "2026-02-10T11:00:00+01:00", "2026-02-10T11:30:00+01:00", "canceled", patient_id=2,
         canceled_at="2026-02-09T18:00:00+01:00"),
    # booked on the day for next week: a future row of this drop
    appt(4, "2026-02-17T09:00:00+01:00", "2026-02-17T09:30:00+01:00", "booked",
         booked_at="2026-02-10T09:50:00+01:00"),
]
DAY_PAYMENTS = [pay(1, 1, "60.00", "2026-02-10T09:50:00+01:00")]


def write_day_drop(data_dir: Path, day=DAY, appointments=DAY_APPOINTMENTS, payments=DAY_PAYMENTS, **kw) -> Path:
    return write_drop(Path(data_dir) / "daily" / day, appointments, payments, **kw)


def kill_when_halfway(argv: list[str], marker: Path, timeout: float = 60) -> None:
    """Run ``argv`` (a script that creates ``marker`` halfway through its transaction and then
    hangs), SIGKILL it as soon as the marker appears, and wait for it to be gone."""
    import os
    import signal
    import subprocess
    import time
    proc = subprocess.Popen(argv, env=os.environ.copy())
    try:
        deadline = time.time() + timeout
        while not marker.exists():
            assert proc.poll() is None, "the script ended before reaching the halfway point"
            assert time.time() < deadline, "the script did not reach the halfway point in time"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
