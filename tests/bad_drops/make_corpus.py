"""Writes the bad-drop corpus of the validation gate: run it to regenerate the folders.

    .venv/bin/python tests/bad_drops/make_corpus.py

- ``base/``: the database before the day (data/raw format, loaded with ``refresh.load_raw``);
- ``clean/``: the drop of D = 2026-03-30 (the Monday after the clocks went forward), valid;
- one folder per bad drop: ``clean/`` with ONE small change, and ``manifest.json`` saying which
  check id must catch it, in which file and on which CSV line (header = line 1).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
DAY = "2026-03-30"

HEADERS = {
    "patients": "patient_id,first_name,last_name,phone,email,consent_form_received,reminder_consent,date_of_birth,gender,created_at",
    "physios": "physio_id,full_name,active",
    "physio_hours": "physio_id,weekday,start_time,end_time",
    "appointments": "appointment_id,patient_id,physio_id,appt_start,appt_end,booked_at,status,canceled_at,price_estimate,is_first_visit",
    "payments": "payment_id,appointment_id,amount,paid_at,method",
}
PATIENTS = [
    "1,Lena,Vogel,+49 151 12345678,lena@example.org,1,1,1980-05-01,F,2026-01-05T10:00:00+01:00",
    "2,Max,Huber,030 1234567,max@example.org,1,0,1975-02-11,M,2026-01-06T10:00:00+01:00",
    "3,Ida,Brandt,+49 40 7654321,,1,1,,F,2026-02-01T10:00:00+01:00",
    "4,Tom,Roth,,,0,0,,,2026-02-02T10:00:00+01:00",
]
NEW_PATIENT = "5,Eva,Kern,+49 170 2345678,eva@example.org,1,1,1990-07-07,F,2026-03-30T08:40:00+02:00"
PHYSIOS = ["1,Anna Berg,1", "2,Jonas Keller,1"]
HOURS = [f"{p},{d},{s},{e}" for p in (1, 2) for d in range(5) for s, e in (("08:00", "12:00"), ("13:00", "18:00"))]
BASE_APPOINTMENTS = [
    "100,1,1,2026-03-27T09:00:00+01:00,2026-03-27T09:45:00+01:00,2026-03-20T10:00:00+01:00,completed,,60.00,1",
    "101,2,2,2026-03-27T10:00:00+01:00,2026-03-27T10:30:00+01:00,2026-03-20T10:05:00+01:00,completed,,45.00,1",
    "102,3,1,2026-04-01T09:00:00+02:00,2026-04-01T09:30:00+02:00,2026-03-20T11:00:00+01:00,booked,,45.00,1",
]
BASE_PAYMENTS = ["500,100,60.00,2026-03-27T10:00:00+01:00,card", "501,101,45.00,2026-03-27T10:40:00+01:00,cash"]

# The clean drop of 2026-03-30 (CEST, +02:00). CSV line = index + 2.
APPOINTMENTS = [
    "200,1,1,2026-03-30T09:00:00+02:00,2026-03-30T09:45:00+02:00,2026-03-23T10:00:00+01:00,completed,,60.00,0",  # line 2
    "201,2,1,2026-03-30T10:00:00+02:00,2026-03-30T10:30:00+02:00,2026-03-24T10:00:00+01:00,no_show,,45.00,0",  # line 3
    "202,5,2,2026-03-30T09:00:00+02:00,2026-03-30T09:30:00+02:00,2026-03-30T08:45:00+02:00,completed,,45.00,1",  # line 4
    "203,3,2,2026-03-30T11:00:00+02:00,2026-03-30T11:30:00+02:00,2026-03-25T10:00:00+01:00,canceled,2026-03-29T18:00:00+02:00,45.00,0",  # line 5
    "204,1,2,2026-04-02T14:00:00+02:00,2026-04-02T14:45:00+02:00,2026-03-30T09:50:00+02:00,booked,,60.00,0",  # line 6: booked on D
    "102,3,1,2026-04-01T09:00:00+02:00,2026-04-01T09:30:00+02:00,2026-03-20T11:00:00+01:00,canceled,2026-03-30T12:00:00+02:00,45.00,1",  # line 7: canceled on D
]
PAYMENTS = [
    "600,200,60.00,2026-03-30T09:50:00+02:00,card",  # line 2
    "601,202,45.00,2026-03-30T09:35:00+02:00,cash",  # line 3
]


def _write(folder: Path, table: str, rows, header=None, raw: bytes | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{table}.csv"
    if raw is not None:
        path.write_bytes(raw)
        return
    path.write_text("\n".join([header or HEADERS[table], *rows]) + "\n", encoding="utf-8")


def clean_tables() -> dict:
    return {"patients": PATIENTS[:3] + [NEW_PATIENT], "physios": list(PHYSIOS),
            "appointments": list(APPOINTMENTS), "payments": list(PAYMENTS)}


def _set(row: str, index: int, value: str) -> str:
    fields = row.split(",")
    fields[index] = value
    return ",".join(fields)


A = {c: i for i, c in enumerate(HEADERS["appointments"].split(","))}
P = {c: i for i, c in enumerate(HEADERS["payments"].split(","))}
T = {c: i for i, c in enumerate(HEADERS["patients"].split(","))}


def bad_drops():
    """(folder, check id, file, line, how) and a function changing the clean tables."""
    def appt(i, col, value):
        return lambda t: t["appointments"].__setitem__(i, _set(t["appointments"][i], A[col], value))

    def pay(i, col, value):
        return lambda t: t["payments"].__setitem__(i, _set(t["payments"][i], P[col], value))

    def pat(i, col, value):
        return lambda t: t["patients"].__setitem__(i, _set(t["patients"][i], T[col], value))

    yield "file_missing", "file.missing", "payments.csv", None, "payments.csv is not there", lambda t: t.pop("payments")
    yield "file_empty", "file.empty", "payments.csv", None, "payments.csv has 0 bytes", lambda t: t.__setitem__("payments", b"")
    yield "file_encoding", "file.encoding", "patients.csv", 3, "line 3 written in Latin-1 (Müller)", \
        lambda t: t.__setitem__("patients", ("\n".join([HEADERS["patients"], t["patients"][0],
                                                         t["patients"][1].replace("Huber", "Müller")] + t["patients"][2:]) + "\n").encode("latin-1"))
    yield "file_malformed", "file.malformed", "appointments.csv", 3, "a stray quote: \"no_show\"x", appt(1, "status", '"no_show"x')
    yield "columns_missing", "columns.missing", "appointments.csv", 1, "is_first_visit left out of header and rows", \
        lambda t: t.__setitem__("appointments", ("__header__", HEADERS["appointments"].rsplit(",", 1)[0],
                                                 [r.rsplit(",", 1)[0] for r in t["appointments"]]))
    yield "columns_extra", "columns.extra", "payments.csv", 1, "an extra column note", \
        lambda t: t.__setitem__("payments", ("__header__", HEADERS["payments"] + ",note", [r + ",x" for r in t["payments"]]))
    yield "row_truncated", "row.truncated", "appointments.csv", 7, "the file ends mid-row", \
        lambda t: t.__setitem__("appointments", ("\n".join([HEADERS["appointments"]] + t["appointments"][:-1]
                                                             + [t["appointments"][-1][:40]])).encode())
    yield "row_too_many_fields", "row.too_many_fields", "appointments.csv", 3, "price written 45,00", appt(1, "price_estimate", "45,00")
    yield "value_missing", "value.missing", "appointments.csv", 2, "patient_id empty", appt(0, "patient_id", "")
    yield "value_type", "value.type", "payments.csv", 2, "amount sixty", pay(0, "amount", "sixty")
    yield "value_choice", "value.choice", "payments.csv", 3, "method paypal", pay(1, "method", "paypal")
    yield "timestamp_no_offset", "timestamp.no_offset", "appointments.csv", 2, "appt_start without offset", \
        appt(0, "appt_start", "2026-03-30T09:00:00")
    yield "timestamp_unparsable", "timestamp.unparsable", "appointments.csv", 3, "booked_at 30 February", \
        appt(1, "booked_at", "2026-02-30T10:00:00+01:00")
    yield "drop_other_day", "drop.other_day", "appointments.csv", 8, "a Thursday appointment of last week", \
        lambda t: t["appointments"].append(
            "205,4,1,2026-03-26T09:00:00+01:00,2026-03-26T09:30:00+01:00,2026-03-20T09:00:00+01:00,completed,,45.00,1")
    yield "drop_no_rows_for_day", "drop.no_rows_for_day", "appointments.csv", None, "only the future rows, nothing of D", \
        lambda t: (t.__setitem__("appointments", t["appointments"][4:]), t.__setitem__("payments", []))
    yield "status_invalid", "status.invalid", "appointments.csv", 2, "status Completed", appt(0, "status", "Completed")
    yield "flag_invalid", "flag.invalid", "patients.csv", 2, "consent yes", pat(0, "consent_form_received", "yes")
    yield "id_duplicate_in_drop", "id.duplicate_in_drop", "payments.csv", 3, "payment id 600 twice", pay(1, "payment_id", "600")
    yield "id_conflict_with_db", "id.conflict_with_db", "payments.csv", 3, "payment id 500 is appointment 100's in the database", \
        pay(1, "payment_id", "500")
    yield "orphan_patient", "orphan.patient", "appointments.csv", 4, "patient 99", appt(2, "patient_id", "99")
    yield "orphan_physio", "orphan.physio", "appointments.csv", 4, "physio 9", appt(2, "physio_id", "9")
    yield "physio_inactive", "physio.inactive", "appointments.csv", 6, "Jonas Keller (physio 2) has left, 204 is booked with him", \
        lambda t: t["physios"].__setitem__(1, "2,Jonas Keller,0")
    yield "orphan_appointment", "orphan.appointment", "payments.csv", 3, "appointment 999", pay(1, "appointment_id", "999")
    yield "overlap_physio", "overlap.physio", "appointments.csv", 2, "201 moved to 09:30 with the same physio as 200", \
        lambda t: (appt(1, "appt_start", "2026-03-30T09:30:00+02:00")(t), appt(1, "appt_end", "2026-03-30T10:00:00+02:00")(t))
    yield "overlap_patient", "overlap.patient", "appointments.csv", 3, "patient 2 at 10:15 with physio 2 too", \
        lambda t: (appt(2, "patient_id", "2")(t), appt(2, "appt_start", "2026-03-30T10:15:00+02:00")(t),
                   appt(2, "appt_end", "2026-03-30T10:45:00+02:00")(t), pay(1, "paid_at", "2026-03-30T10:50:00+02:00")(t))
    yield "time_end_before_start", "time.end_before_start", "appointments.csv", 2, "ends 08:45", appt(0, "appt_end", "2026-03-30T08:45:00+02:00")
    yield "time_booked_after_start", "time.booked_after_start", "appointments.csv", 2, "booked at 10:00 for 09:00", \
        appt(0, "booked_at", "2026-03-30T10:00:00+02:00")
    yield "time_canceled_at_not_canceled", "time.canceled_at_not_canceled", "appointments.csv", 2, "completed with canceled_at", \
        appt(0, "canceled_at", "2026-03-29T10:00:00+02:00")
    yield "time_canceled_after_start", "time.canceled_after_start", "appointments.csv", 5, "canceled 10 minutes after the start", \
        appt(3, "canceled_at", "2026-03-30T11:10:00+02:00")
    yield "time_outcome_in_future", "time.outcome_in_future", "appointments.csv", 6, "next Thursday already completed", \
        appt(4, "status", "completed")
    yield "price_negative", "price.negative", "appointments.csv", 2, "price -60.00", appt(0, "price_estimate", "-60.00")
    yield "roster_outside", "roster.outside", "appointments.csv", 6, "booked at 19:00, the roster ends at 18:00", \
        lambda t: (appt(4, "appt_start", "2026-04-02T19:00:00+02:00")(t), appt(4, "appt_end", "2026-04-02T19:45:00+02:00")(t))
    yield "payment_negative", "payment.negative", "payments.csv", 2, "amount -60.00", pay(0, "amount", "-60.00")
    yield "payment_not_completed", "payment.not_completed", "payments.csv", 3, "paid for the no_show 201", \
        lambda t: (pay(1, "appointment_id", "201")(t), pay(1, "paid_at", "2026-03-30T10:35:00+02:00")(t))
    yield "payment_too_much", "payment.too_much", "payments.csv", 2, "250.00 for a 60.00 visit", pay(0, "amount", "250.00")
    yield "payment_before_appointment", "payment.before_appointment", "payments.csv", 2, "paid 08:30 for 09:00", \
        pay(0, "paid_at", "2026-03-30T08:30:00+02:00")
    yield "payment_duplicate", "payment.duplicate", "payments.csv", 4, "payment 602 repeats 600", \
        lambda t: t["payments"].append(_set(t["payments"][0], P["payment_id"], "602"))
    yield "phone_scientific", "patient.phone_scientific", "patients.csv", 5, "phone 4.91702E+11 (a spreadsheet's)", \
        pat(3, "phone", "4.91702E+11")
    yield "phone_invalid", "patient.phone_invalid", "patients.csv", 5, "phone 12", pat(3, "phone", "12")
    yield "email_invalid", "patient.email_invalid", "patients.csv", 5, "email eva@@example", pat(3, "email", "eva@@example")


def main() -> None:
    for child in HERE.iterdir():
        if child.is_dir() and child.name != "__pycache__":
            shutil.rmtree(child)
    base = HERE / "base"
    _write(base, "patients", PATIENTS)
    _write(base, "physios", PHYSIOS)
    _write(base, "physio_hours", HOURS)
    _write(base, "appointments", BASE_APPOINTMENTS)
    _write(base, "payments", BASE_PAYMENTS)
    manifest = {"day": DAY, "base": "base", "clean": "clean", "drops": []}
    for name, change in [("clean", None)] + [(d[0], d) for d in bad_drops()]:
        tables = clean_tables()
        if change is not None:
            folder, check, file, line, how, fn = change
            fn(tables)
            severity = __import__("clinic_lib.validation.checks", fromlist=["CATALOGUE"]).CATALOGUE[check].severity
            manifest["drops"].append({"folder": folder, "check": check, "severity": severity, "file": file,
                                      "line": line, "change": how, "exit_code": 1 if severity == "error" else 0})
        for table, rows in tables.items():
            if isinstance(rows, bytes):
                _write(HERE / name, table, None, raw=rows)
            elif isinstance(rows, tuple):
                _write(HERE / name, table, rows[2], header=rows[1])
            else:
                _write(HERE / name, table, rows)
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {len(manifest['drops'])} bad drops and the clean one under {HERE}")


if __name__ == "__main__":
    main()
