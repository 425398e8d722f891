"""Import the public "Medical Appointment No Shows" file into a fresh database of our schema.

Source: Kaggle dataset ``joniarroba/noshowappointments`` v2 (May 2016) by Joni Hoppen (Aquarela
Analytics), CC BY-NC-SA 4.0 -- attribute it, non-commercial use, share derived data alike. The full
file lives outside the repository (``../shared/data/real/KaggleV2-May-2016.csv.zip``).

Mapping (one row of the file = one appointment):

=================  ===========================================================================
file column        our schema
=================  ===========================================================================
AppointmentID      appointments.appointment_id
PatientId          patients.patient_id / appointments.patient_id. Stored as a float in the file;
                   integral values are kept as integers (all fit in 64 bits). The 5 ids written
                   like ``9377952927E-5`` (not whole numbers) get the integer of their digits
                   (9377952927); if that ever collided with another id or exceeded 2^63-1, every
                   id would be replaced by its dense rank instead (reported in the summary).
Gender             patients.gender (F/M)
Age                patients.date_of_birth, *approximate*: the patient's first AppointmentDay minus
                   Age years (the file has no birth date). Age -1 -> NULL (unknown).
ScheduledDay       appointments.booked_at, taken as UTC as written ("Z").
AppointmentDay     appointments.local_date (the date as written); the file has no time of day, so
                   appt_start = 08:00 clinic-local (CLINIC_TZ, use America/Sao_Paulo for this file)
                   and appt_end = appt_start + 30 min. A same-day booking made after 08:00 gets
                   appt_start = the booking instant rounded up to the minute (at most 23:00), and
                   booked_at is clamped to appt_start if still later, so booked_at <= appt_start.
No-show            Yes -> status no_show, No -> completed (the file has no cancellations)
SMS_received       not imported: it is per appointment and decided after booking; our
                   reminder_consent is a patient's consent. patients.reminder_consent = 0.
Neighbourhood, Scholarship, Hipertension, Diabetes, Alcoholism, Handcap: no place in our schema.
=================  ===========================================================================

Left empty: physio_id (no practitioner), price_estimate_cents, phone, email; no payments.
first_name = "Patient", last_name = the patient id. is_first_visit = the patient's earliest
appointment in the file. Rows whose AppointmentDay is before the ScheduledDay date (5 in the file)
are dropped and counted in the summary. The import refuses a database that already holds patients
or appointments, and writes everything in one transaction.
"""
from __future__ import annotations

import datetime as dt
import io
import zipfile
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from clinic_lib.core import db
from clinic_lib.core.config import get_settings
from clinic_lib.core.errors import CannotRun, UserError
from clinic_lib.core.migrate import ensure_schema
from clinic_lib.core.timeutil import series_local_date, series_to_utc_text, utc_now_text
from clinic_lib.ingest import sqlite_ingest
from clinic_lib.ingest.drop_format import ID_COLUMN

COLUMNS = ["PatientId", "AppointmentID", "Gender", "ScheduledDay", "AppointmentDay", "Age",
           "Neighbourhood", "Scholarship", "Hipertension", "Diabetes", "Alcoholism", "Handcap",
           "SMS_received", "No-show"]
REQUIRED = ["PatientId", "AppointmentID", "Gender", "ScheduledDay", "AppointmentDay", "Age", "No-show"]
START_TIME = dt.time(8, 0)
LATEST_START = dt.time(23, 0)
LENGTH = pd.Timedelta(minutes=30)


class ImportError_(UserError):
    """The file cannot be imported; the database is unchanged."""


def read_file(path: Path) -> pd.DataFrame:
    """The CSV (inside a zip or plain) as text columns."""
    path = Path(path)
    if not path.exists():
        raise CannotRun(f"{path}: file not found")
    try:
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if n.lower().endswith(".csv")]
                if not names:
                    raise ImportError_(f"{path}: the zip holds no .csv file")
                data = z.read(names[0])
        else:
            data = path.read_bytes()
        lines = [ln for ln in data.decode("utf-8-sig").splitlines(keepends=True) if not ln.startswith("#")]
        frame = pd.read_csv(io.StringIO("".join(lines)), dtype=str, keep_default_na=False)
    except (zipfile.BadZipFile, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ImportError_(f"{path}: cannot read it as the no-show CSV: {exc}") from None
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ImportError_(f"{path.name}: missing column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")
    return frame


def _bad(file, frame, mask, column, message):
    if mask.any():
        pos = int(np.flatnonzero(np.asarray(mask))[0])
        raise ImportError_(f"{file} line {pos + 2} column {column}: {message} "
                           f"(value {str(frame[column].iloc[pos])[:40]!r})")


def patient_ids(text: pd.Series, file: str = "file") -> tuple[pd.Series, dict]:
    """Float-formatted patient ids -> int64 (see the module doc); returns (ids, notes)."""
    uniq = pd.unique(text.str.strip())
    values = {}
    for u in uniq:
        try:
            values[u] = Decimal(u)
        except InvalidOperation:
            values[u] = None
    bad = text.str.strip().map(lambda u: values[u] is None or values[u] < 0 or not values[u].is_finite())
    _bad(file, text.to_frame("PatientId"), bad, "PatientId", "expected a non-negative number")
    mapped, fractional = {}, []
    for u, d in values.items():
        if d == d.to_integral_value():
            mapped[u] = int(d)
        else:
            fractional.append(u)
            mapped[u] = int(format(d, "f").replace(".", "").lstrip("0") or "0")
    integral = {v for u, v in mapped.items() if u not in fractional}
    frac_ids = [mapped[u] for u in fractional]
    collide = (len(set(frac_ids)) != len(frac_ids) or any(i in integral for i in frac_ids)
               or any(v > db.MAX_ID for v in mapped.values()))
    notes = {"patient_ids_not_whole": len(fractional), "patient_ids_dense_ranked": bool(collide)}
    if collide:
        order = sorted(values, key=lambda u: values[u])
        mapped = {u: i + 1 for i, u in enumerate(order)}
    return text.str.strip().map(mapped).astype("int64"), notes


def convert(raw: pd.DataFrame, tz, file: str = "file") -> tuple[dict[str, pd.DataFrame], dict]:
    """The file's rows -> our tables (patients, appointments) and an import summary."""
    summary = {"rows_read": int(len(raw))}
    aid = pd.to_numeric(raw["AppointmentID"].str.strip(), errors="coerce")
    _bad(file, raw, aid.isna() | (aid < 0) | (aid != aid.round()), "AppointmentID", "expected a whole number")
    _bad(file, raw, aid.duplicated(), "AppointmentID", "duplicate appointment id")
    pid, notes = patient_ids(raw["PatientId"], file)
    summary.update(notes)
    booked = pd.to_datetime(raw["ScheduledDay"].str.strip(), utc=True, errors="coerce", format="ISO8601")
    _bad(file, raw, booked.isna(), "ScheduledDay", "expected an ISO 8601 timestamp")
    day_text = raw["AppointmentDay"].str.strip().str[:10]
    day = pd.to_datetime(day_text, errors="coerce", format="%Y-%m-%d")
    _bad(file, raw, day.isna(), "AppointmentDay", "expected a date")
    age = pd.to_numeric(raw["Age"].str.strip(), errors="coerce")
    _bad(file, raw, age.isna() | (age != age.round()) | (age > 130), "Age", "expected a whole number of years")
    noshow = raw["No-show"].str.strip()
    _bad(file, raw, ~noshow.isin(["Yes", "No"]), "No-show", "expected Yes or No")
    gender = raw["Gender"].str.strip()

    frame = pd.DataFrame({"appointment_id": aid.astype("int64"), "patient_id": pid, "booked": booked,
                          "day": day, "day_text": day_text, "age": age, "noshow": noshow, "gender": gender})
    # Quirk: appointment day before the day it was booked -> dropped (counted).
    before = frame["day_text"] < raw["ScheduledDay"].str.strip().str[:10]
    summary["dropped_appointment_before_booking"] = int(before.sum())
    frame = frame[~before].reset_index(drop=True)

    # appt_start: 08:00 clinic-local on the day; later same-day bookings move it (see module doc).
    local_8 = (frame["day"] + pd.Timedelta(hours=START_TIME.hour)).dt.tz_localize(
        tz, ambiguous=True, nonexistent="shift_forward").dt.tz_convert("UTC")
    latest = (frame["day"] + pd.Timedelta(hours=LATEST_START.hour)).dt.tz_localize(
        tz, ambiguous=True, nonexistent="shift_forward").dt.tz_convert("UTC")
    start = local_8.astype(frame["booked"].dtype)
    late = frame["booked"] > start
    moved = frame["booked"].dt.ceil("min").astype(start.dtype)
    start = start.where(~late, np.minimum(moved, latest.astype(start.dtype)))
    clamp = frame["booked"] > start
    booked_at = frame["booked"].where(~clamp, start)
    summary["same_day_start_moved"] = int(late.sum())
    summary["booked_at_clamped"] = int(clamp.sum())
    local_date = series_local_date(start, tz)
    off = local_date != frame["day_text"]
    if off.any():
        raise ImportError_(f"{file}: {int(off.sum())} appointment(s) would fall on another local day in "
                           f"CLINIC_TZ={tz}; set CLINIC_TZ=America/Sao_Paulo for this file")
    order = frame.assign(_s=start).sort_values(["patient_id", "_s", "appointment_id"])
    first = ~order["patient_id"].duplicated()
    appts = pd.DataFrame({
        "appointment_id": frame["appointment_id"], "patient_id": frame["patient_id"],
        "physio_id": pd.array([pd.NA] * len(frame), dtype="Int64"),
        "appt_start": series_to_utc_text(start), "appt_end": series_to_utc_text(start + LENGTH),
        "booked_at": series_to_utc_text(booked_at),
        "status": np.where(frame["noshow"] == "Yes", "no_show", "completed").astype(object),
        "canceled_at": None, "price_estimate_cents": pd.array([pd.NA] * len(frame), dtype="Int64"),
        "is_first_visit": first.reindex(frame.index).astype(int), "local_date": frame["day_text"].astype(object)})

    # Patients: gender and approximate date of birth from the earliest appointment with an age.
    first_rows = frame.assign(_s=start).sort_values(["patient_id", "_s", "appointment_id"])
    with_age = first_rows[first_rows["age"] >= 0].drop_duplicates("patient_id")
    dob = {}
    for r in with_age.itertuples(index=False):
        d = r.day.date()
        y = d.year - int(r.age)
        try:
            dob[r.patient_id] = d.replace(year=y).isoformat()
        except ValueError:  # 29 February
            dob[r.patient_id] = d.replace(year=y, day=28).isoformat()
    summary["age_unknown_rows"] = int((frame["age"] < 0).sum())
    per_patient = first_rows.drop_duplicates("patient_id")
    created = frame.groupby("patient_id")["booked"].min()
    gen = per_patient.set_index("patient_id")["gender"]
    pats = pd.DataFrame({"patient_id": per_patient["patient_id"].to_numpy()})
    pats["first_name"] = "Patient"
    pats["last_name"] = pats["patient_id"].astype(str)
    pats["phone"] = None
    pats["email"] = None
    pats["consent_form_received"] = 0
    pats["reminder_consent"] = 0
    pats["date_of_birth"] = pats["patient_id"].map(dob).astype(object)
    g = pats["patient_id"].map(gen)
    pats["gender"] = g.where(g.isin(["F", "M"]), None).astype(object)
    pats["created_at"] = series_to_utc_text(pats["patient_id"].map(created).pipe(pd.to_datetime, utc=True))
    summary["patients"] = int(len(pats))
    summary["appointments"] = int(len(appts))
    summary["no_show_rate"] = round(float((appts["status"] == "no_show").mean()), 4) if len(appts) else None
    return {"patients": pats, "appointments": appts}, summary


def import_noshow(path, database_url: str | None = None, out: Path | None = None) -> dict:
    """Import the file into a fresh database (``database_url``, else the SQLite file ``out``)."""
    from clinic_lib.ingest.refresh import bulk_insert, log_etl_run
    from clinic_lib.modeling.features import with_all_columns
    settings = get_settings()
    path = Path(path)
    if database_url is None:
        out = Path(out) if out else settings.data_dir / "noshow.db"
        database_url = "sqlite:///" + str(out.resolve())
    engine = db.make_engine(database_url)
    try:
        ensure_schema(engine)
        started = utc_now_text()
        with engine.connect() as conn:
            have = {t: conn.execute(sa.select(sa.func.count()).select_from(db.metadata.tables[t])).scalar()
                    for t in ("patients", "appointments")}
        if any(have.values()):
            raise CannotRun(f"refusing to import into a non-empty database ({have['patients']} patients, "
                            f"{have['appointments']} appointments): give a fresh --out file or --database-url")
        raw = read_file(path)
        tables, summary = convert(raw, settings.clinic_tz, path.name)
        # in primary-key order: each table's b-tree is then filled by appending
        frames = {table: with_all_columns(table, tables[table]).sort_values(ID_COLUMN[table])
                  for table in ("patients", "appointments")}
        # foreign keys and CHECKs on: every row is checked
        with db.begin_bulk_write(engine, check_foreign_keys=True) as conn:
            if db.sqlite_file(conn) is not None:
                # through scratch files written in C, not bound row by row by Python's sqlite3
                sqlite_ingest.insert_frames(conn, frames)
            else:
                for table, frame in frames.items():
                    bulk_insert(conn, table, frame)
        written = sum(len(frame) for frame in frames.values())
        log_etl_run(engine, "import-noshow", None, started, "ok", summary["rows_read"], written)
        summary["database"] = engine.url.render_as_string(hide_password=True)
        summary["clinic_tz"] = str(settings.clinic_tz)
        return summary
    finally:
        engine.dispose()
