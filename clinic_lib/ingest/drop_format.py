"""The clinic's CSV files: their format, and reading them into clean frames ready for the database.

The same format serves the initial load (``data/raw/``) and the daily drops (``data/daily/D/``):

===================  ==========================================================================
file                 columns (in this order; UTF-8, comma-separated, header row)
===================  ==========================================================================
patients.csv         patient_id, first_name, last_name, phone, email, consent_form_received,
                     reminder_consent, date_of_birth, gender, created_at
physios.csv          physio_id, full_name, active
physio_hours.csv     physio_id, weekday, start_time, end_time   (raw only; optional in a drop)
appointments.csv     appointment_id, patient_id, physio_id, appt_start, appt_end, booked_at,
                     status, canceled_at, price_estimate, is_first_visit
payments.csv         payment_id, appointment_id, amount, paid_at, method
===================  ==========================================================================

Timestamps are ISO 8601 *with* an offset (``2026-03-29T09:00:00+02:00`` or ``...Z``); a timestamp
without one is refused, because the same wall-clock time means two instants on the night the
clocks go back. Money is in euros with up to two decimals. Flags are 0/1. Empty means unknown.

Errors name the file, the line (the header is line 1), the column and the value: the first
problem found stops the read. The validation gate (``validate.py``) reports every problem at once.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from clinic_lib.core import db
from clinic_lib.core.errors import UserError
from clinic_lib.core.timeutil import series_local_date, utc_text_array

COLUMNS = {
    "patients": ["patient_id", "first_name", "last_name", "phone", "email", "consent_form_received",
                 "reminder_consent", "date_of_birth", "gender", "created_at"],
    "physios": ["physio_id", "full_name", "active"],
    "physio_hours": ["physio_id", "weekday", "start_time", "end_time"],
    "appointments": ["appointment_id", "patient_id", "physio_id", "appt_start", "appt_end",
                     "booked_at", "status", "canceled_at", "price_estimate", "is_first_visit"],
    "payments": ["payment_id", "appointment_id", "amount", "paid_at", "method"],
}
DROP_FILES = ("patients", "physios", "appointments", "payments")  # physio_hours is optional
ID_COLUMN = {"patients": "patient_id", "physios": "physio_id", "appointments": "appointment_id",
             "payments": "payment_id"}

OFFSET_PATTERN = re.compile(r"(?:Z|[+-]\d{2}:?\d{2})$")
# The forms almost every file holds, checked and converted in C by Arrow (far faster than the
# general way). A column with any other value, or any value Arrow refuses
# (a 30th of February), goes the general way below, which reads the same values to the same
# result and names the first bad one (tests/test_dataset.py).
PLAIN_INSTANT = r"^(?:19|20)\d\d-\d\d-\d\dT\d\d:\d\d:\d\d(?:Z|[+-](?:0\d|1[0-4]):[0-5]\d)$"
# An id is written in digits (spaces around it and a ".0" a spreadsheet adds are allowed) and is
# below 2**63, the database's BIGINT. It is read exactly, never through floats, so that two ids
# above 2**53 stay two. Eighteen digits are always below 2**63: that is the quick form.
MAX_ID = db.MAX_ID
PLAIN_ID = r"^\d{1,18}$"
_ID_TEXT = r"^\s*(\d+)(?:\.0*)?\s*$"
# An amount in euros is a number below MAX_EUROS (cents fit the database's BIGINT with room to add).
MAX_EUROS = 10**12
PLAIN_EUROS = r"^\d{1,12}(?:\.\d{1,2})?$"
# A roster block's HH:MM, 00:00 .. 23:59: the load and the gate both read it with this one pattern.
TIME_OF_DAY = r"(?:[01]\d|2[0-3]):[0-5]\d"
_TIME = re.compile(rf"^{TIME_OF_DAY}$")


class DropError(UserError, ValueError):
    """A file that cannot be loaded, with where: file, line, column, value."""

    def __init__(self, file: str, message: str, line: int | None = None, column: str | None = None,
                 value=None):
        self.file, self.line, self.column, self.value = file, line, column, value
        where = file + (f" line {line}" if line is not None else "") + (f" column {column}" if column else "")
        shown = f" (value {str(value)[:60]!r})" if value is not None else ""
        super().__init__(f"{where}: {message}{shown}")


@dataclass
class Tables:
    """Frames in the database's own form (UTC text, cents, local dates), keyed by table name."""
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    rows_read: int = 0

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.frames[name]


def _line(frame: pd.DataFrame, mask) -> int:
    """The CSV line of the first row where mask is true (header = line 1)."""
    return int(np.flatnonzero(np.asarray(mask))[0]) + 2


def _first(frame, mask, column):
    pos = int(np.flatnonzero(np.asarray(mask))[0])
    return pos + 2, frame[column].iloc[pos]


def read_csv_text(path: Path) -> pd.DataFrame:
    """Read one CSV as text columns; encoding, emptiness and ragged rows are errors."""
    name = path.name
    if not path.exists():
        raise DropError(name, f"file is missing (looked in {path.parent})")
    data = path.read_bytes()
    if not data.strip():
        raise DropError(name, "file is empty: expected at least a header row")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise DropError(name, f"is not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start}",
                        line=line) from None
    try:
        # pyarrow's reader first: multi-threaded, many times faster on large files, the same
        # frame. It refuses any row with more or fewer fields than the header, so a file it
        # reads needs no ragged-row check; any file it refuses is read again below, where
        # pandas' own reader says which line is wrong.
        return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, engine="pyarrow")
    except Exception:
        pass
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False,
                            skipinitialspace=False)
    except pd.errors.ParserError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise DropError(name, f"malformed CSV: {exc}", line=int(match.group(1)) if match else None) from None
    except pd.errors.EmptyDataError:
        raise DropError(name, "file is empty: expected at least a header row") from None
    # A row cut off mid-way has fewer fields than the header: pandas would silently fill them.
    # Rows that all have one field too many: pandas reads the first as an index column and
    # shifts the data by one column without a word.
    ragged = _first_ragged_line(text, len(frame.columns))
    if ragged is not None:
        line, fields = ragged
        hint = "truncated file?" if fields < len(frame.columns) else "a stray comma?"
        raise DropError(name, f"row has {'fewer' if fields < len(frame.columns) else 'more'} fields "
                              f"than the header ({len(frame.columns)}): {hint}", line=line)
    return frame


def _first_ragged_line(text: str, n_fields: int) -> tuple[int, int] | None:
    """(line number, number of fields) of the first record whose field count is not the
    header's, or None. A file cut inside a quoted field counts as one field short."""
    if '"' not in text:  # the common case, fast: count separators line by line
        for number, line in enumerate(text.splitlines(), start=1):
            if line and line.count(",") != n_fields - 1:
                return number, line.count(",") + 1
        return None
    reader = csv.reader(io.StringIO(text))
    for record in reader:
        if record and len(record) != n_fields:
            return reader.line_num, len(record)
    if text.count('"') % 2:
        return text.count("\n") + 1, n_fields - 1  # an unbalanced quote: cut inside a field
    return None


def check_columns(table: str, frame: pd.DataFrame, file: str) -> None:
    expected = COLUMNS[table]
    missing = [c for c in expected if c not in frame.columns]
    if missing:
        raise DropError(file, f"missing column(s) {', '.join(missing)}; expected {', '.join(expected)}")
    extra = [c for c in frame.columns if c not in expected]
    if extra:
        raise DropError(file, f"unexpected column(s) {', '.join(map(str, extra))}; expected {', '.join(expected)}")


def plain_values(column: pd.Series, pattern: str, required: bool, kind: pa.DataType) -> pd.Series | None:
    """The column converted by Arrow to ``kind`` if every value matches ``pattern`` (or is
    empty, where allowed: missing then); None when any value does not or Arrow refuses one."""
    text = pa.array(column)  # the column as read (pyarrow's reader): no copy
    if not pa.types.is_string(text.type) and not pa.types.is_large_string(text.type):
        return None
    plain = pc.match_substring_regex(text, pattern)
    if not required:
        empty = pc.equal(text, "")
        plain = pc.or_(plain, empty)
        text = pc.if_else(empty, pa.scalar(None, text.type), text)
    if not pc.all(plain, skip_nulls=False).as_py():  # a null (not read as text) is not plain either
        return None
    try:
        values = text.cast(kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    # whole numbers stay exact (Int64), not floats with NaN for the missing
    converted = values.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    return pd.Series(converted.array, index=column.index)  # the values in order, whatever the index


def id_values(column: pd.Series) -> pd.Series:
    """The ids of a text column as Int64, exactly; <NA> where a value is empty or not an id. The
    load and the gate both read ids with this."""
    plain = plain_values(column, PLAIN_ID, False, pa.int64())
    if plain is not None:
        return plain
    digits = column.astype(str).str.extract(_ID_TEXT, expand=False)
    exact = [int(d) if isinstance(d, str) and int(d) <= MAX_ID else None for d in digits]
    return pd.Series(pd.array(exact, dtype="Int64"), index=column.index)


def _ids(frame, column, file, required=True) -> pd.Series:
    plain = plain_values(frame[column], PLAIN_ID, required, pa.int64())
    if plain is not None:
        return plain
    values = id_values(frame[column])
    empty = frame[column].str.strip() == ""
    bad = values.isna() & ~empty
    if required:
        bad |= empty
    if bad.any():
        line, value = _first(frame, bad, column)
        raise DropError(file, "expected a whole non-negative number", line=line, column=column, value=value)
    return values.astype("Int64")


def _instants(frame, column, file, required=True) -> pd.Series:
    plain = plain_values(frame[column], PLAIN_INSTANT, required, pa.timestamp("s", tz="UTC"))
    if plain is not None:
        return plain.astype("datetime64[us, UTC]")  # the unit pandas 3 reads ISO text in
    return _instants_any_form(frame, column, file, required)


def _instants_any_form(frame, column, file, required=True) -> pd.Series:
    text = frame[column].str.strip()
    empty = text == ""
    if required and empty.any():
        raise DropError(file, "a timestamp is required", line=_line(frame, empty), column=column, value="")
    no_offset = ~empty & ~text.str.contains(OFFSET_PATTERN)
    if no_offset.any():
        line, value = _first(frame, no_offset, column)
        raise DropError(file, "timestamp has no UTC offset; write it as 2026-03-29T09:00:00+02:00",
                        line=line, column=column, value=value)
    parsed = pd.to_datetime(text.where(~empty, None), utc=True, errors="coerce", format="ISO8601")
    bad = parsed.isna() & ~empty
    if bad.any():
        line, value = _first(frame, bad, column)
        raise DropError(file, "not an ISO 8601 timestamp", line=line, column=column, value=value)
    return parsed


def _flags(frame, column, file) -> pd.Series:
    text = frame[column].str.strip()
    bad = ~text.isin(["0", "1"])
    if bad.any():
        line, value = _first(frame, bad, column)
        raise DropError(file, "expected 0 or 1", line=line, column=column, value=value)
    return text.astype(int)


def _cents(frame, column, file, required=True) -> pd.Series:
    values = plain_values(frame[column], PLAIN_EUROS, required, pa.float64())
    if values is not None:
        return (values * 100).round().astype("Int64")
    text = frame[column].str.strip()
    empty = text == ""
    values = pd.to_numeric(text, errors="coerce")
    bad = (values.isna() & ~empty) | (values < 0) | (required & empty) | (values >= MAX_EUROS)
    if bad.any():
        line, value = _first(frame, bad, column)
        raise DropError(file, "expected an amount in euros >= 0, like 65.00", line=line, column=column, value=value)
    return (values * 100).round().astype("Int64")


def _choice(frame, column, file, allowed, required=True) -> pd.Series:
    text = frame[column].str.strip()
    bad = ~text.isin(allowed) & ((text != "") | required)
    if bad.any():
        line, value = _first(frame, bad, column)
        raise DropError(file, f"expected one of {', '.join(allowed)}", line=line, column=column, value=value)
    return text.where(text != "", None).astype(object)


def _unique(frame, column, values, file):
    dup = values.duplicated(keep="first") & values.notna()
    if dup.any():
        line, value = _first(frame, dup, column)
        raise DropError(file, "duplicate id in this file", line=line, column=column, value=value)


def _utc_text(utc: pd.Series) -> pd.Series:
    """Stored UTC text, kept in Arrow (pandas' "str"): the initial load hands it to SQLite as it is."""
    return pd.Series(pd.array(utc_text_array(utc), dtype="str"), index=utc.index)


def _text(frame, column) -> pd.Series:
    text = frame[column].str.strip()
    return text.where(text != "", None).astype(object)


def parse_table(table: str, frame: pd.DataFrame, tz: ZoneInfo, file: str | None = None) -> pd.DataFrame:
    """Text columns of one file -> the database's form; the first bad value raises DropError."""
    file = file or f"{table}.csv"
    check_columns(table, frame, file)
    if table == "patients":
        ids = _ids(frame, "patient_id", file)
        _unique(frame, "patient_id", ids, file)
        for col in ("first_name", "last_name"):
            empty = frame[col].str.strip() == ""
            if empty.any():
                raise DropError(file, "a name is required", line=_line(frame, empty), column=col, value="")
        dob_text = frame["date_of_birth"].str.strip()
        dob = pd.to_datetime(dob_text.where(dob_text != "", None), errors="coerce", format="%Y-%m-%d")
        bad = dob.isna() & (dob_text != "")
        if bad.any():
            line, value = _first(frame, bad, "date_of_birth")
            raise DropError(file, "expected a date YYYY-MM-DD", line=line, column="date_of_birth", value=value)
        return pd.DataFrame({
            "patient_id": ids, "first_name": frame["first_name"].str.strip(),
            "last_name": frame["last_name"].str.strip(), "phone": _text(frame, "phone"),
            "email": _text(frame, "email"),
            "consent_form_received": _flags(frame, "consent_form_received", file),
            "reminder_consent": _flags(frame, "reminder_consent", file),
            "date_of_birth": _text(frame, "date_of_birth"),
            "gender": _choice(frame, "gender", file, ("F", "M", "X"), required=False),
            "created_at": _utc_text(_instants(frame, "created_at", file)),
        })
    if table == "physios":
        ids = _ids(frame, "physio_id", file)
        _unique(frame, "physio_id", ids, file)
        return pd.DataFrame({"physio_id": ids, "full_name": frame["full_name"].str.strip(),
                             "active": _flags(frame, "active", file)})
    if table == "physio_hours":
        weekday = pd.to_numeric(frame["weekday"].str.strip(), errors="coerce")
        bad = ~weekday.isin(range(7))
        if bad.any():
            line, value = _first(frame, bad, "weekday")
            raise DropError(file, "expected a weekday 0 (Monday) .. 6 (Sunday)", line=line, column="weekday", value=value)
        for col in ("start_time", "end_time"):
            bad = ~frame[col].str.strip().str.match(_TIME)
            if bad.any():
                line, value = _first(frame, bad, col)
                raise DropError(file, "expected a local time HH:MM", line=line, column=col, value=value)
        bad = frame["end_time"].str.strip() <= frame["start_time"].str.strip()
        if bad.any():
            raise DropError(file, "end_time must be after start_time", line=_line(frame, bad), column="end_time")
        return pd.DataFrame({"physio_id": _ids(frame, "physio_id", file), "weekday": weekday.astype(int),
                             "start_time": frame["start_time"].str.strip(),
                             "end_time": frame["end_time"].str.strip()})
    if table == "appointments":
        ids = _ids(frame, "appointment_id", file)
        _unique(frame, "appointment_id", ids, file)
        start = _instants(frame, "appt_start", file)
        end = _instants(frame, "appt_end", file)
        booked = _instants(frame, "booked_at", file)
        canceled = _instants(frame, "canceled_at", file, required=False)
        status = _choice(frame, "status", file, db.APPOINTMENT_STATUSES)
        bad = ~(end > start)
        if bad.any():
            line, value = _first(frame, bad, "appt_end")
            raise DropError(file, "appt_end must be after appt_start", line=line, column="appt_end", value=value)
        bad = booked > start
        if bad.any():
            line, value = _first(frame, bad, "booked_at")
            raise DropError(file, "booked_at must not be after appt_start", line=line, column="booked_at", value=value)
        bad = canceled.notna() & (status != "canceled")
        if bad.any():
            line, value = _first(frame, bad, "canceled_at")
            raise DropError(file, "canceled_at is only for status canceled", line=line, column="canceled_at", value=value)
        return pd.DataFrame({
            "appointment_id": ids, "patient_id": _ids(frame, "patient_id", file),
            "physio_id": _ids(frame, "physio_id", file, required=False),
            "appt_start": _utc_text(start), "appt_end": _utc_text(end),
            "booked_at": _utc_text(booked), "status": status,
            "canceled_at": _utc_text(canceled),
            "price_estimate_cents": _cents(frame, "price_estimate", file, required=False),
            "is_first_visit": _flags(frame, "is_first_visit", file),
            "local_date": series_local_date(start, tz),
        })
    if table == "payments":
        ids = _ids(frame, "payment_id", file)
        _unique(frame, "payment_id", ids, file)
        paid = _instants(frame, "paid_at", file)
        return pd.DataFrame({
            "payment_id": ids, "appointment_id": _ids(frame, "appointment_id", file),
            "amount_cents": _cents(frame, "amount", file),
            "paid_at": _utc_text(paid), "paid_date": series_local_date(paid, tz),
            "method": _choice(frame, "method", file, db.PAYMENT_METHODS),
        })
    raise KeyError(table)


def read_table(folder: Path, table: str, tz: ZoneInfo) -> pd.DataFrame:
    """Read and parse one CSV file of a folder (``<table>.csv``)."""
    return parse_table(table, read_csv_text(Path(folder) / f"{table}.csv"), tz)


def check_folder(folder: Path) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise DropError(str(folder), "folder is missing")
    return folder


def read_folder(folder: Path, tz: ZoneInfo, required=DROP_FILES, optional=("physio_hours",)) -> Tables:
    """Read and parse the CSV files of a folder (a drop or data/raw)."""
    folder = check_folder(folder)
    out = Tables()
    for table in list(required) + [t for t in optional if (folder / f"{t}.csv").exists()]:
        out.frames[table] = read_table(folder, table, tz)
        out.rows_read += len(out.frames[table])
    return out


def records(frame: pd.DataFrame) -> list[dict]:
    """Rows as dicts with None for missing values and plain Python scalars (for executemany)."""
    obj = frame.astype(object)
    return obj.where(frame.notna(), None).to_dict("records")


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write a frame in the drop format (columns in the documented order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
