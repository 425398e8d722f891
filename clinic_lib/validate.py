"""The validation gate: check a daily drop before anything is written, or the whole database.

``validate_drop(day)`` reads ``data/daily/D/`` and reports *every* problem (``dataset.parse_table``,
used by the refresh, stops at the first): file structure and values per file with pandera's lazy
validation (every failing row with its column and value), then the relational checks (orphans,
overlaps, payments against appointments, ids against the database) in SQL on the drop staged in
TEMP tables inside a transaction that is rolled back. The database's own tables are only read.

``validate_db()`` checks the whole database with set-based SQL (indexed EXISTS probes and
aggregates, no Python loops over rows). Checks that the database already guarantees with a
constraint it enforces (a CHECK, a validated Postgres foreign key, a primary key, the payment
triggers) are skipped and listed in ``report.notes``; ``full=True`` runs them anyway. SQLite
foreign keys are never trusted (another tool may write with ``PRAGMA foreign_keys=OFF``).

Each run writes ``validation_D.json`` / ``validation_db_<UTC timestamp>.json`` under
``get_settings().validation_dir`` and one row in ``validation_runs`` (the only write to the
database). ``report.exit_code``: 0 clean or warnings only, 1 errors; a run that cannot happen
(no drop folder, no database, bad day) raises ``CannotRun`` (exit 2). The check ids, severities and
meanings are in ``checks.py``.
"""
from __future__ import annotations

import contextlib
import csv
import datetime as dt
import functools
import io
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import sqlalchemy as sa

from clinic_lib.core import db

from clinic_lib.core import phones
from clinic_lib.core.clinic_days import is_clinic_day
from clinic_lib.validation.checks import CATALOGUE, DB, DROP, ERROR, NO_ROWS_FOR_DAY, for_scope
from clinic_lib.core.config import get_settings
from clinic_lib.ingest.drop_format import COLUMNS, DROP_FILES, ID_COLUMN, OFFSET_PATTERN, PLAIN_INSTANT, plain_values
from clinic_lib.ingest.refresh import VERSIONED_TABLES, newer_in_database
from clinic_lib.core.errors import CannotRun, UserError
from clinic_lib.core.timeutil import ISO_FORMAT, day_texts, local_day_bounds_utc, parse_day, series_to_utc_text, utc_now_text
from clinic_lib.core.roster import apply_drop, read_blocks
from clinic_lib.core.roster import as_frame as roster_frame

MAX_EXAMPLES = 10
STATUSES = db.APPOINTMENT_STATUSES
ACTIVE = ("booked", "completed", "no_show")  # statuses that occupy a slot
_TIME = r"(?:[01]\d|2[0-3]):[0-5]\d"
_EMAIL = r"[^@\s,;<>\"]+@[^@\s,;<>\".]+(?:\.[^@\s,;<>\".]+)*\.[^@\s,;<>\".\d]{2,}"


def payment_max_factor() -> float:
    return get_settings().payment_max_factor


def phone_region() -> str:
    return get_settings().phone_region


class ValidationFailed(UserError):
    """Raised (by ``Report.raise_for_errors``) when a run found errors: the chain must stop here."""


# --- the report ----------------------------------------------------------------------------------

@dataclass
class CheckResult:
    id: str
    severity: str
    meaning: str
    count: int = 0
    examples: list = field(default_factory=list)

    def add(self, examples: list[dict], count: int | None = None) -> None:
        self.count += len(examples) if count is None else int(count)
        room = MAX_EXAMPLES - len(self.examples)
        if room > 0:
            self.examples.extend(_plain(e) for e in examples[:room])


def _plain(example: dict) -> dict:
    out = {}
    for k, v in example.items():
        if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA or v is pd.NaT:
            out[k] = None
        elif isinstance(v, (np.integer,)):
            out[k] = int(v)
        elif isinstance(v, (np.floating,)):
            out[k] = float(v)
        elif isinstance(v, (dt.datetime, pd.Timestamp)):
            out[k] = v.astimezone(dt.timezone.utc).strftime(ISO_FORMAT) if v.tzinfo else v.isoformat()
        elif isinstance(v, dt.date):
            out[k] = v.isoformat()
        elif isinstance(v, (int, float, str, bool)):
            out[k] = v
        else:
            out[k] = str(v)
    return out


class Report:
    """What one validation run found: every check of its scope, failed or not."""

    def __init__(self, scope: str, day: dt.date | None = None, source: str = ""):
        self.scope, self.day, self.source = scope, day, source
        self.checks = {d.id: CheckResult(d.id, d.severity, d.meaning) for d in for_scope(scope)}
        self.notes: list[str] = []
        self.started_at = utc_now_text()
        self.finished_at: str | None = None
        self.seconds: float | None = None
        self.report_path: Path | None = None

    def add(self, check_id: str, examples: list[dict], count: int | None = None) -> None:
        self.checks[check_id].add(examples, count)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks.values() if c.count]

    @property
    def errors(self) -> list[CheckResult]:
        return [c for c in self.failed if c.severity == ERROR]

    @property
    def warnings(self) -> list[CheckResult]:
        return [c for c in self.failed if c.severity != ERROR]

    @property
    def status(self) -> str:
        return "errors" if self.errors else "warnings" if self.warnings else "ok"

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self) -> None:
        """Raise ValidationFailed with the summary if any error-severity check failed."""
        if self.errors:
            raise ValidationFailed(self.summary_text())

    def summary_text(self, examples: int = 3) -> str:
        what = f"drop {self.day}" if self.scope == DROP else "database"
        n_err = sum(c.count for c in self.errors)
        n_warn = sum(c.count for c in self.warnings)
        head = (f"validation of {what}: {self.status.upper()} - {n_err} error row(s) in {len(self.errors)} "
                f"check(s), {n_warn} warning row(s) in {len(self.warnings)} check(s)")
        lines = [head]
        for c in self.errors + self.warnings:
            lines.append(f"  {c.severity:7} {c.id}: {c.count} row(s) - {c.meaning}")
            for e in c.examples[:examples]:
                lines.append("           " + _describe(e))
        if self.report_path:
            lines.append(f"  report: {self.report_path}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "scope": self.scope, "day": self.day.isoformat() if self.day else None, "source": self.source,
            "status": self.status, "exit_code": self.exit_code,
            "started_at": self.started_at, "finished_at": self.finished_at, "seconds": self.seconds,
            "n_errors": sum(c.count for c in self.errors), "n_warnings": sum(c.count for c in self.warnings),
            "failed": [c.id for c in self.failed], "notes": self.notes,
            "checks": [{"id": c.id, "severity": c.severity, "count": c.count, "meaning": c.meaning,
                        "examples": c.examples} for c in self.checks.values()],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, default=str)

    def checks_frame(self) -> pd.DataFrame:
        """One row per check (failed first), for a notebook table."""
        rows = [{"check": c.id, "severity": c.severity, "rows": c.count,
                 "result": ("FAILED" if c.severity == ERROR else "warn") if c.count else "ok",
                 "meaning": c.meaning} for c in self.checks.values()]
        frame = pd.DataFrame(rows)
        if frame.empty:
            return frame
        order = frame["result"].map({"FAILED": 0, "warn": 1, "ok": 2})
        return frame.assign(_o=order).sort_values(["_o"], kind="stable").drop(columns="_o").reset_index(drop=True)

    def examples_frame(self) -> pd.DataFrame:
        """The example rows of every failed check, one row each."""
        rows = [{"check": c.id, "severity": c.severity, **e} for c in self.failed for e in c.examples]
        return pd.DataFrame(rows)


def _describe(example: dict) -> str:
    parts = []
    if "file" in example:
        parts.append(str(example["file"]) + (f" line {example['line']}" if example.get("line") is not None else "")
                     + (f" column {example['column']}" if example.get("column") else ""))
    # a value is cut short (it may be anything); a problem is our own sentence, said in full
    parts += [f"{k}={str(v)[:300 if k == 'problem' else 60]!r}" if isinstance(v, str) else f"{k}={v}"
              for k, v in example.items() if k not in ("file", "line", "column")]
    return ", ".join(parts)


# --- value parsing shared by the pandera checks and the staging ----------------------------------

_MEMO = threading.local()


def _memo(fn):
    """Within one drop validation, parse each column once (keyed by the Series object, kept alive)."""
    @functools.wraps(fn)
    def wrapper(s):
        memo = getattr(_MEMO, "d", None)
        if memo is None:
            return fn(s)
        key = (fn.__name__, id(s))
        if key not in memo:
            memo[key] = (s, fn(s))
        return memo[key][1]
    return wrapper


class _Cols(dict):
    """The columns of a file as Series objects that stay the same (so parsing is memoised)."""

    def __init__(self, frame: pd.DataFrame):
        super().__init__({c: frame[c] for c in frame.columns})
        self.frame, self.index, self.columns = frame, frame.index, list(frame.columns)

    @property
    def at(self):
        return self.frame.at


@_memo
def _strip(s: pd.Series) -> pd.Series:
    return s.astype(str).str.strip()


# The plain forms almost every export uses (no spaces, ids and euros in digits, timestamps as
# 2026-03-30T09:00:00+02:00), recognised and converted in C by Arrow (dataset.plain_values); a
# column with any other value goes the general way below, value by value.
_PLAIN_NUMBER = r"^\d{1,15}(?:\.\d{1,2})?$"


@_memo
def _plain_numbers(s: pd.Series) -> pd.Series | None:
    """Floats (NaN for empty) if every value is a plain number, else None."""
    return plain_values(s, _PLAIN_NUMBER, False, pa.float64())


@_memo
def _plain_instants(s: pd.Series) -> pd.Series | None:
    """UTC timestamps (NaT for empty) if every value is a plain timestamp Arrow can read, else None."""
    values = plain_values(s, PLAIN_INSTANT, False, pa.timestamp("s", tz="UTC"))
    return None if values is None else values.astype("datetime64[ns, UTC]")


@_memo
def _numbers(s: pd.Series) -> pd.Series:
    plain = _plain_numbers(s)
    return plain if plain is not None else pd.to_numeric(_strip(s), errors="coerce").astype(float)


def _passes_in_plain_form(kind: str, s: pd.Series) -> bool:
    """Every value of ``s`` is plain and so passes every check of ``kind``: its masks would all be
    true (``_check_values`` does not compute them)."""
    if kind in ("ts", "ts_opt"):
        values = _plain_instants(s)
    elif kind in ("pk", "id", "id_opt", "price", "amount"):
        values = _plain_numbers(s)
        # ids are whole (15 digits are below 2**53); amounts below 1e12
        if values is not None:
            fine = values == np.floor(values) if kind in ("pk", "id", "id_opt") else values < 1e12
            values = values if (fine | values.isna()).all() else None
    else:
        return False
    return values is not None and (kind in ("ts_opt", "id_opt", "price") or not values.isna().any())


def _ok_id(s):
    t, v = _strip(s), _numbers(s)
    return (t == "") | (v.notna() & (v >= 0) & (v == np.floor(v)) & (v < 2 ** 53))


def _ok_required(s):
    return _strip(s) != ""


@_memo
def _offset(s):
    return _strip(s).str.contains(OFFSET_PATTERN)


def _has_offset(s):
    return (_strip(s) == "") | _offset(s)


@_memo
def _instants(s: pd.Series) -> pd.Series:
    """Text -> UTC timestamps (NaT for empty, offset-less or unparsable)."""
    plain = _plain_instants(s)
    if plain is not None:
        return plain
    t = _strip(s)
    usable = (t != "") & _offset(s) & (t.str.len() <= 40)
    if not usable.any():
        return pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns, UTC]")
    out = pd.to_datetime(t.where(usable, None), utc=True, errors="coerce", format="ISO8601")
    return out.astype("datetime64[ns, UTC]") if len(out) else out


def _ok_instant(s):
    return (_strip(s) == "") | ~_offset(s) | _instants(s).notna()


def _ok_flag(s):
    return _strip(s).isin(["0", "1"])


def _ok_status(s):
    return _strip(s).isin(STATUSES)


def _ok_gender(s):
    return _strip(s).isin(["", "F", "M", "X"])


def _ok_method(s):
    return _strip(s).isin(db.PAYMENT_METHODS)


def _ok_date(s):
    t = _strip(s)
    parsed = pd.to_datetime(t.where(t.str.fullmatch(r"\d{4}-\d{2}-\d{2}"), None), errors="coerce", format="%Y-%m-%d")
    return (t == "") | parsed.notna()


def _ok_amount_type(s):
    t, v = _strip(s), _numbers(s)
    return (t == "") | (v.notna() & np.isfinite(v) & (v.abs() < 1e12))


def _ok_not_negative(s):
    return ~(_numbers(s) < 0)


def _ok_weekday(s):
    return _strip(s).isin([str(d) for d in range(7)])


def _ok_hhmm(s):
    return _strip(s).str.fullmatch(_TIME).fillna(False).astype(bool)


def email_ok(s: pd.Series) -> pd.Series:
    t = s.fillna("").astype(str).str.strip()
    return (t == "") | t.str.fullmatch(_EMAIL).fillna(False).astype(bool)


def _db_contacts(conn, out: Report) -> None:
    """patient.phone_scientific, patient.phone_invalid and patient.email_invalid over the whole
    table (vectorised, see phones.possible_or_empty; grouping the shapes in SQL is slower)."""
    cursor = conn.connection.cursor()  # the DB-API cursor: plain tuples, no Row objects for 60k rows
    try:
        cursor.execute("SELECT patient_id, phone, email FROM patients WHERE phone IS NOT NULL OR email IS NOT NULL")
        rows = cursor.fetchall()
    finally:
        cursor.close()
    ids, phone_values, emails = (list(c) for c in zip(*rows)) if rows else ([], [], [])
    p = pd.DataFrame({"patient_id": ids, "phone": phone_values, "email": emails}, dtype=object)
    for check_id, column, ok in (("patient.phone_scientific", "phone", phone_not_scientific),
                                 ("patient.phone_invalid", "phone", phone_ok),
                                 ("patient.email_invalid", "email", email_ok)):
        wrong = p[~ok(p[column])] if len(p) else p
        if len(wrong):
            out.add(check_id, [{"patient_id": r.patient_id, "value": getattr(r, column)}
                               for r in wrong.sort_values("patient_id").head(MAX_EXAMPLES).itertuples()],
                    count=len(wrong))


def phone_ok(s: pd.Series, region: str | None = None) -> pd.Series:
    """patient.phone_invalid passes: empty, dialable, or in scientific notation (which is
    patient.phone_scientific's to report)."""
    return phones.possible_or_empty(s, region or phone_region()) | phones.scientific(s)


def phone_not_scientific(s: pd.Series) -> pd.Series:
    return ~phones.scientific(s)


# kind of column -> [(check id, ok-function)]
KINDS = {
    "pk": [("value.missing", _ok_required), ("value.type", _ok_id)],
    "id": [("value.missing", _ok_required), ("value.type", _ok_id)],
    "id_opt": [("value.type", _ok_id)],
    "name": [("value.missing", _ok_required)],
    "ts": [("value.missing", _ok_required), ("timestamp.no_offset", _has_offset), ("timestamp.unparsable", _ok_instant)],
    "ts_opt": [("timestamp.no_offset", _has_offset), ("timestamp.unparsable", _ok_instant)],
    "flag": [("flag.invalid", _ok_flag)],
    "status": [("status.invalid", _ok_status)],
    "gender": [("value.choice", _ok_gender)],
    "method": [("value.choice", _ok_method)],
    "date": [("value.type", _ok_date)],
    "price": [("value.type", _ok_amount_type), ("price.negative", _ok_not_negative)],
    "amount": [("value.missing", _ok_required), ("value.type", _ok_amount_type), ("payment.negative", _ok_not_negative)],
    "phone": [("patient.phone_scientific", phone_not_scientific), ("patient.phone_invalid", lambda s: phone_ok(s))],
    "email": [("patient.email_invalid", email_ok)],
    "weekday": [("value.type", _ok_weekday)],
    "hhmm": [("value.type", _ok_hhmm)],
}
SPEC = {
    "patients": {"patient_id": "pk", "first_name": "name", "last_name": "name", "phone": "phone", "email": "email",
                 "consent_form_received": "flag", "reminder_consent": "flag", "date_of_birth": "date",
                 "gender": "gender", "created_at": "ts"},
    "physios": {"physio_id": "pk", "full_name": "name", "active": "flag"},
    "physio_hours": {"physio_id": "id", "weekday": "weekday", "start_time": "hhmm", "end_time": "hhmm"},
    "appointments": {"appointment_id": "pk", "patient_id": "id", "physio_id": "id_opt", "appt_start": "ts",
                     "appt_end": "ts", "booked_at": "ts", "status": "status", "canceled_at": "ts_opt",
                     "price_estimate": "price", "is_first_visit": "flag"},
    "payments": {"payment_id": "pk", "appointment_id": "id", "amount": "amount", "paid_at": "ts", "method": "method"},
}


# --- reading the files of a drop ------------------------------------------------------------------

def _plain_columns(text: str):
    """The usual export (nothing quoted, no blank line, every row as long as the header) read by
    Arrow's CSV reader: (header, 1, one Arrow array per header field, the data rows' lines), or
    None for any other file, which ``_csv_records`` reads record by record (slower)."""
    import pyarrow.csv as pacsv

    if '"' in text or "\x00" in text:
        return None
    if "\r" in text:
        if text.count("\r") != text.count("\r\n"):
            return None  # a lone carriage return ends a record for the csv module
        text = text.replace("\r\n", "\n")
    if text.startswith("\n") or "\n\n" in text:
        return None  # blank lines: the csv module skips them, and counts them
    try:
        table = pacsv.read_csv(
            io.BytesIO(text.encode("utf-8")),
            read_options=pacsv.ReadOptions(autogenerate_column_names=True, use_threads=False),
            parse_options=pacsv.ParseOptions(quote_char=False, ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(column_types={f"f{i}": pa.string() for i in range(text.split("\n", 1)[0].count(",") + 1)},
                                                 strings_can_be_null=False))
    except pa.ArrowInvalid:
        return None  # a row longer or shorter than the header
    header = [table.column(i)[0].as_py() for i in range(table.num_columns)]
    data = table.slice(1)
    return header, 1, [data.column(i).combine_chunks() for i in range(data.num_columns)], range(2, data.num_rows + 2)


def _csv_records(text: str, name: str, report: Report):
    """Any CSV, record by record: (header, header line, records, their first lines); blank lines
    are skipped, malformed and truncated records reported."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header, header_line, records, lines = None, None, [], []
    prev = 0
    while True:
        try:
            for record in reader:  # resumed after a malformed record (the reader goes on after it)
                start, prev = prev + 1, reader.line_num
                if not record or (len(record) == 1 and not record[0].strip()):
                    continue  # a blank line
                if header is None:
                    header, header_line = record, start
                    continue
                records.append(record)
                lines.append(start)
            break
        except csv.Error as exc:
            line = prev + 1
            if "end of data" in str(exc) or reader.line_num <= prev:
                report.add("row.truncated", [{"file": name, "line": line, "problem": str(exc)}])
                break
            report.add("file.malformed", [{"file": name, "line": line, "problem": str(exc)}])
            prev = reader.line_num
    return header, header_line, records, lines


def _read_file(path: Path, table: str, report: Report) -> pd.DataFrame | None:
    """One CSV -> text frame indexed by line number (header = line 1); structure problems reported."""
    name = path.name
    if not path.is_file():
        if table != "physio_hours":
            report.add("file.missing", [{"file": name, "folder": str(path.parent)}])
        return None
    data = path.read_bytes()
    if not data.strip():
        report.add("file.empty", [{"file": name, "bytes": len(data)}])
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        report.add("file.encoding", [{"file": name, "line": data[:exc.start].count(b"\n") + 1,
                                      "byte_offset": exc.start, "value": f"0x{data[exc.start]:02x}"}])
        return None
    plain = _plain_columns(text)
    header, header_line, records, lines = plain or _csv_records(text, name, report)
    if header is None:
        report.add("file.empty", [{"file": name, "bytes": len(data)}])
        return None
    expected = COLUMNS[table]
    position, extra = {}, []
    for i, col in enumerate(header):
        if col in expected and col not in position:
            position[col] = i
        else:
            extra.append(col)
    missing = [c for c in expected if c not in position]
    if missing:
        report.add("columns.missing", [{"file": name, "line": header_line, "column": c,
                                        "expected": ",".join(expected)} for c in missing])
    if extra:
        report.add("columns.extra", [{"file": name, "line": header_line, "column": c,
                                      "expected": ",".join(expected)} for c in extra])
    n = len(header)
    if plain is not None:  # every row complete; "records" are the columns
        index = pd.Index(lines, name="line", dtype="int64")
        cols = {c: pd.Series(records[i].to_pandas().array, index=index) for c, i in position.items()}
        return pd.DataFrame(cols, index=index)
    good, good_lines = [], []
    for record, line in zip(records, lines):
        if len(record) < n:
            report.add("row.truncated", [{"file": name, "line": line, "fields": len(record), "expected": n}])
        elif len(record) > n:
            report.add("row.too_many_fields", [{"file": name, "line": line, "fields": len(record), "expected": n}])
        else:
            good.append(record)
            good_lines.append(line)
    index = pd.Index(good_lines, name="line", dtype="int64")
    by_column = list(zip(*good)) if good else [()] * n
    cols = {c: pd.Series(by_column[i], index=index, dtype=object).astype(str) for c, i in position.items()}
    return pd.DataFrame(cols, index=index)


def _check_values(table: str, frame: pd.DataFrame, report: Report) -> None:
    """Per-file value checks: pandera, lazily, so every failing row of every column is reported."""
    file = f"{table}.csv"
    masks = {}
    for col, kind in SPEC[table].items():
        if col not in frame.columns:
            continue
        # each mask is computed once from the shared parse; pandera collects every failing row lazily
        if _passes_in_plain_form(kind, frame[col]):
            everywhere = pd.Series(True, index=frame.index)
            masks[col] = [(check_id, everywhere) for check_id, _ in KINDS[kind]]
        else:
            masks[col] = [(check_id, fn(frame[col])) for check_id, fn in KINDS[kind]]
    # a clean file (every mask all true) cannot fail the schema: pandera runs only when a row fails
    clean = all(m.dtype == bool and bool(m.to_numpy().all()) for checks in masks.values() for _, m in checks)
    columns = {}
    if not clean:
        import pandera.pandas as pa
        columns = {col: pa.Column(checks=[pa.Check(lambda _s, m=m: m, name=check_id, element_wise=False)
                                          for check_id, m in checks], required=False, nullable=True)
                   for col, checks in masks.items()}
    id_col = ID_COLUMN.get(table)
    if id_col in frame.columns:
        ids = _numbers(frame[id_col])
        dup = ids.duplicated(keep="first") & ids.notna()
        if dup.any():
            report.add("id.duplicate_in_drop", [{"file": file, "line": int(line), "column": id_col,
                                                 "value": frame.at[line, id_col]} for line in frame.index[dup]])
    key = ["physio_id", "weekday", "start_time"]
    if table == "physio_hours" and all(c in frame.columns for c in key):
        # the roster's primary key: the refresh's insert would fail on the second block
        blocks = pd.DataFrame({c: _strip(frame[c]) for c in key})
        blocks["physio_id"] = _numbers(frame["physio_id"])
        dup = blocks.duplicated(keep="first") & blocks["physio_id"].notna()
        if dup.any():
            report.add("id.duplicate_in_drop", [{"file": file, "line": int(line), "column": "start_time",
                                                 "physio_id": frame.at[line, "physio_id"],
                                                 "weekday": frame.at[line, "weekday"],
                                                 "value": frame.at[line, "start_time"]} for line in frame.index[dup]])
    if not columns or frame.frame.empty:
        return
    try:
        pa.DataFrameSchema(columns, strict=False).validate(frame.frame, lazy=True)
        return
    except pa.errors.SchemaErrors as exc:
        failures = exc.failure_cases
    failures = failures[failures["index"].notna() & failures["check"].isin(list(CATALOGUE))]
    failures = failures.sort_values(["index"], kind="stable")
    for check_id, group in failures.groupby("check", sort=False):
        examples = []
        for row in group.head(MAX_EXAMPLES).itertuples(index=False):
            line = int(row.index)
            example = {"file": file, "line": line, "column": row.column, "value": row.failure_case}
            if id_col in frame.columns and row.column != id_col:
                example[id_col] = frame.at[line, id_col]
            examples.append(example)
        report.add(check_id, examples, count=len(group))


# --- the drop in the database's form (tolerant: a bad value becomes NULL) -------------------------

def _ids(frame, col) -> pd.Series:
    if col not in frame.columns:
        return pd.Series(pd.NA, index=frame.index, dtype="Int64")
    v = _numbers(frame[col])
    ok = v.notna() & (v >= 0) & (v == np.floor(v)) & (v < 2 ** 53)
    return v.where(ok).astype("Int64")


def _cents(frame, col) -> pd.Series:
    if col not in frame.columns:
        return pd.Series(pd.NA, index=frame.index, dtype="Int64")
    v = _numbers(frame[col])
    ok = v.notna() & np.isfinite(v) & (v.abs() < 1e12)
    return (v.where(ok) * 100).round().astype("Int64")


def _ts(frame, col) -> pd.Series:
    if col not in frame.columns:
        return pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns, UTC]")
    return _instants(frame[col])


_HOURS_MINUTES = np.array([f"{m // 60:02d}:{m % 60:02d}" for m in range(1440)], dtype=object)


def _strftime(ts: pd.Series, fmt: str) -> pd.Series:
    """``ts.dt.strftime(fmt)`` (NaT -> NaN) for ``ISO_FORMAT`` (of UTC instants), ``%Y-%m-%d`` and
    ``%H:%M``, built from tables (each date once, each minute from a list) as the load does;
    values with fractions of a second or outside the years 1000-9999 take pandas' path."""
    wall = (ts.dt.tz_localize(None) if ts.dt.tz is not None else ts).to_numpy()
    nat = np.isnat(wall)
    unit = np.datetime_data(wall.dtype)[0]
    per_second = {"s": 1, "ms": 10 ** 3, "us": 10 ** 6, "ns": 10 ** 9}.get(unit)
    valid = wall[~nat]
    years = valid.astype("datetime64[Y]").astype("int64") + 1970
    if per_second is None or (valid.view("int64") % per_second).any() or (years < 1000).any() or (years > 9999).any():
        return ts.dt.strftime(fmt).astype(object)
    if fmt == ISO_FORMAT:
        if str(ts.dt.tz) != "UTC":
            raise ValueError("ISO_FORMAT text is for UTC instants")
        out = series_to_utc_text(ts).to_numpy(dtype=object, copy=True)
    else:
        days, seconds = np.divmod(np.where(nat, 0, wall.astype("datetime64[s]").astype("int64")), 86400)
        out = day_texts(days) if fmt == "%Y-%m-%d" else _HOURS_MINUTES[seconds // 60]
    out[nat] = np.nan
    return pd.Series(out, index=ts.index, dtype=object)


def _text_utc(ts: pd.Series) -> pd.Series:
    return _strftime(ts, ISO_FORMAT).where(ts.notna(), None)


def _local(ts: pd.Series, tz) -> pd.Series:
    return ts.dt.tz_convert(tz)


def _dates(local: pd.Series) -> pd.Series:
    return _strftime(local, "%Y-%m-%d").where(local.notna(), None)


def _day_starts(dates: pd.Series, days: int, tz) -> pd.Series:
    """First instant (stored UTC text) of each 'YYYY-MM-DD' plus ``days`` (once per distinct date)."""
    starts = {d: local_day_bounds_utc(dt.date.fromisoformat(d) + dt.timedelta(days=days), tz)[0]
              for d in pd.unique(dates.dropna())}
    return dates.map(starts).astype(object).where(dates.notna(), None)


def _earlier(a: pd.Series, b: pd.Series) -> pd.Series:
    """The earlier of two stored UTC texts (same format, so the smaller text); None if either is."""
    return a.where(a < b, b).where(a.notna() & b.notna(), None)


def _stage_frames(frames: dict, tz, day: dt.date, report: Report) -> dict[str, pd.DataFrame]:
    """Typed frames for the TEMP tables (first row of each id only) and the drop.other_day check."""
    out = {}
    day_text = day.isoformat()
    if "patients" in frames:
        f = frames["patients"]
        out["patients"] = pd.DataFrame({"patient_id": _ids(f, "patient_id"), "line": f.index})
    if "physios" in frames:
        f = frames["physios"]
        active = (pd.to_numeric(_strip(f["active"]), errors="coerce").where(_ok_flag(f["active"])).astype("Int64")
                  if "active" in f else pd.Series(pd.NA, index=f.index, dtype="Int64"))
        out["physios"] = pd.DataFrame({"physio_id": _ids(f, "physio_id"), "active": active, "line": f.index})
    if "physio_hours" in frames:
        f = frames["physio_hours"]
        hours = pd.DataFrame({"physio_id": _ids(f, "physio_id"),
                              "weekday": pd.to_numeric(_strip(f["weekday"]), errors="coerce").where(_ok_weekday(f["weekday"])).astype("Int64")
                              if "weekday" in f else pd.NA,
                              "start_time": _strip(f["start_time"]) if "start_time" in f else None,
                              "end_time": _strip(f["end_time"]) if "end_time" in f else None, "line": f.index})
        ok = hours["physio_id"].notna() & hours["weekday"].isin(range(7)) \
            & hours["start_time"].astype(str).str.fullmatch(_TIME).fillna(False).astype(bool) \
            & hours["end_time"].astype(str).str.fullmatch(_TIME).fillna(False).astype(bool)
        bad = ok & (hours["end_time"].astype(str) <= hours["start_time"].astype(str))
        if bad.any():
            report.add("time.end_before_start", [
                {"file": "physio_hours.csv", "line": int(r.line), "column": "end_time", "physio_id": int(r.physio_id),
                 "start_time": r.start_time, "end_time": r.end_time} for r in hours[bad].itertuples()])
        out["physio_hours"] = hours[ok & ~bad]
    if "appointments" in frames:
        f = frames["appointments"]
        start, end, booked, canceled = (_ts(f, c) for c in ("appt_start", "appt_end", "booked_at", "canceled_at"))
        ls, le = _local(start, tz), _local(end, tz)
        local_date = _dates(ls)
        status = _strip(f["status"]) if "status" in f else pd.Series("", index=f.index)
        a = pd.DataFrame({
            "appointment_id": _ids(f, "appointment_id"), "patient_id": _ids(f, "patient_id"),
            "physio_id": _ids(f, "physio_id"), "appt_start": _text_utc(start), "appt_end": _text_utc(end),
            "booked_at": _text_utc(booked), "status": status.where(status.isin(STATUSES), None).astype(object),
            "canceled_at": _text_utc(canceled), "price_estimate_cents": _cents(f, "price_estimate"),
            "local_date": local_date,
            # where the overlap probes look: from the start of the previous local date up to the end
            # of this appointment or of the next local date, whichever comes first
            "probe_start": _day_starts(local_date, -1, tz),
            "probe_end": _earlier(_text_utc(end), _day_starts(local_date, 2, tz)),
            "local_weekday": ls.dt.day_of_week.astype("Int64"), "local_start": _strftime(ls, "%H:%M"),
            "local_end": _strftime(le, "%H:%M").where(_dates(le) == _dates(ls), "24:00"),
            "line": f.index})
        # drop.other_day: before D, and neither booked nor canceled on D
        other = (a["local_date"].notna() & (a["local_date"].astype(str) < day_text)
                 & (_dates(_local(booked, tz)) != day_text) & (_dates(_local(canceled, tz)) != day_text))
        if other.any():
            report.add("drop.other_day", [
                {"file": "appointments.csv", "line": int(r.line), "column": "appt_start",
                 "appointment_id": r.appointment_id, "local_date": r.local_date, "value": f.at[r.line, "appt_start"]}
                for r in a[other].itertuples()], count=int(other.sum()))
        out["appointments"] = a
    if "payments" in frames:
        f = frames["payments"]
        paid = _ts(f, "paid_at")
        method = _strip(f["method"]) if "method" in f else pd.Series("", index=f.index)
        p = pd.DataFrame({"payment_id": _ids(f, "payment_id"), "appointment_id": _ids(f, "appointment_id"),
                          "amount_cents": _cents(f, "amount"), "paid_at": _text_utc(paid),
                          "paid_date": _dates(_local(paid, tz)), "method": method.astype(object),
                          "line": f.index})
        other = p["paid_date"].notna() & (p["paid_date"] != day_text)
        if other.any():
            report.add("drop.other_day", [
                {"file": "payments.csv", "line": int(r.line), "column": "paid_at", "payment_id": r.payment_id,
                 "paid_date": r.paid_date, "value": f.at[r.line, "paid_at"]} for r in p[other].itertuples()],
                count=int(other.sum()))
        out["payments"] = p
    for table, frame in out.items():
        key = ID_COLUMN.get(table)
        if key:
            out[table] = frame[frame[key].notna() & ~frame[key].duplicated(keep="first")]
    return out


# --- SQL helpers -----------------------------------------------------------------------------------

_STAGE_COLUMNS = {
    "patients": [("patient_id", "id"), ("line", "int")],
    "physios": [("physio_id", "id"), ("active", "int"), ("line", "int")],
    "physio_hours": [("physio_id", "id"), ("weekday", "int"), ("start_time", "text"), ("end_time", "text"),
                     ("line", "int")],
    "appointments": [("appointment_id", "id"), ("patient_id", "id"), ("physio_id", "id"), ("appt_start", "ts"),
                     ("appt_end", "ts"), ("booked_at", "ts"), ("status", "text"), ("canceled_at", "ts"),
                     ("price_estimate_cents", "id"), ("local_date", "date"),
                     ("probe_start", "ts"), ("probe_end", "ts"),
                     ("local_weekday", "int"), ("local_start", "text"),
                     ("local_end", "text"), ("line", "int")],
    "payments": [("payment_id", "id"), ("appointment_id", "id"), ("amount_cents", "id"), ("paid_at", "ts"),
                 ("paid_date", "date"), ("method", "text"), ("line", "int")],
}


def _sqltype(conn, kind: str) -> str:
    if db.is_sqlite(conn):
        return {"id": "INTEGER", "int": "INTEGER"}.get(kind, "TEXT")
    return {"id": "BIGINT", "int": "INTEGER", "ts": "TIMESTAMP WITH TIME ZONE", "date": "DATE"}.get(kind, "TEXT")


def _tuples(frame: pd.DataFrame, columns: list[str]) -> list[tuple]:
    """Rows as plain Python values (None for missing), column by column (no per-cell isinstance)."""
    cols = []
    for c in columns:
        s = frame[c]
        values = s.astype(object).tolist()  # Python ints/str
        missing = s.isna().to_numpy()
        if missing.any():
            values = [None if m else v for v, m in zip(values, missing)]
        cols.append(values)
    return list(zip(*cols))


def _stage(conn, name: str, table: str, frame: pd.DataFrame | None) -> None:
    cols = _STAGE_COLUMNS[table]
    conn.exec_driver_sql(f"CREATE TEMP TABLE {name} (" + ", ".join(f"{c} {_sqltype(conn, k)}" for c, k in cols) + ")")
    if frame is not None and len(frame):
        names = [c for c, _ in cols]
        mark = "?" if db.is_sqlite(conn) else "%s"
        conn.exec_driver_sql(f"INSERT INTO {name} ({', '.join(names)}) VALUES ({', '.join([mark] * len(names))})",
                             _tuples(frame, names))


def _rows(conn, sql: str, **params) -> list[dict]:
    return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]


def _instant_param(conn, name: str) -> str:
    return f":{name}" if db.is_sqlite(conn) else f"CAST(:{name} AS TIMESTAMP WITH TIME ZONE)"


def _date_param(conn, name: str) -> str:
    return f":{name}" if db.is_sqlite(conn) else f"CAST(:{name} AS DATE)"


def _require_schema(engine: sa.Engine) -> None:
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
    except sa.exc.SQLAlchemyError as exc:
        raise CannotRun(f"cannot open the database: {str(exc).splitlines()[0]}") from None
    needed = set(db.DATA_TABLES) | {"validation_runs"}
    if not needed <= tables:
        raise CannotRun(f"the database has no clinic schema (missing {', '.join(sorted(needed - tables))}): "
                        "run `clinic migrate` (and `clinic load`) first")


# --- checks on appointments / payments rows, shared by both scopes --------------------------------
# (check id, condition on a row of appointments `a`, column to name, enforcing constraints)

APPOINTMENT_ROW_CHECKS = [
    ("time.end_before_start", "a.appt_end <= a.appt_start", "appt_end", ("ck_appointments_end_after_start",)),
    ("time.booked_after_start", "a.booked_at > a.appt_start", "booked_at", ("ck_appointments_booked_before_start",)),
    ("time.canceled_at_not_canceled", "a.canceled_at IS NOT NULL AND a.status <> 'canceled'", "canceled_at",
     ("ck_appointments_canceled_at_only_for_canceled",)),
    ("time.canceled_after_start", "a.status = 'canceled' AND a.canceled_at > a.appt_start", "canceled_at", ()),
    ("time.outcome_in_future", "a.status IN ('completed', 'no_show') AND a.appt_start >= {horizon}", "status", ()),
]
DB_ONLY_APPOINTMENT_CHECKS = [
    ("status.invalid", "a.status IS NULL OR a.status NOT IN ('booked', 'completed', 'canceled', 'no_show')",
     "status", ("ck_appointments_status",)),
    ("flag.invalid", "a.is_first_visit IS NULL OR a.is_first_visit NOT IN (0, 1)", "is_first_visit",
     ("ck_appointments_is_first_visit_flag",)),
    ("price.negative", "a.price_estimate_cents < 0", "price_estimate_cents", ("ck_appointments_price_non_negative",)),
]
_CANONICAL = "'[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]+00:00'"
APPOINTMENT_COLUMNS = "a.appointment_id, a.patient_id, a.physio_id, a.appt_start, a.appt_end, a.booked_at, a.status, a.canceled_at"


def _example(row: dict, file: str | None, column: str) -> dict:
    line = row.pop("line", None)
    if file is None:
        return row
    return {"file": file, "line": line, "column": column, **row}


def _row_checks(conn, report: Report, table_sql: str, checks, file: str | None, params: dict,
                extra_cols: str = "") -> None:
    """Count every condition in one pass; fetch examples only for the conditions that failed."""
    checks = [c for c in checks if c[0] in report.checks]
    if not checks:
        return
    if len(checks) == 1:  # a WHERE lets the planner use an index
        counts = conn.execute(sa.text(f"SELECT COUNT(*) FROM {table_sql} WHERE {checks[0][1]}"), params).one()
    else:
        sums = ", ".join(f"SUM(CASE WHEN {cond} THEN 1 ELSE 0 END) AS c{i}" for i, (_, cond, _, _) in enumerate(checks))
        counts = conn.execute(sa.text(f"SELECT {sums} FROM {table_sql}"), params).one()
    for i, (check_id, cond, column, _) in enumerate(checks):
        n = counts[i] or 0
        if n:
            order = "a.line" if file else "1"
            rows = _rows(conn, f"SELECT {extra_cols}{APPOINTMENT_COLUMNS if 'appointments' in table_sql else '*'} "
                               f"FROM {table_sql} WHERE {cond} ORDER BY {order} LIMIT {MAX_EXAMPLES}", **params)
            report.add(check_id, [_example(r, file, column) for r in rows], count=n)


# --- drop validation -----------------------------------------------------------------------------

def validate_drop(day, engine: sa.Engine | None = None, folder: Path | None = None, record: bool = True,
                  allow_empty: bool = False) -> Report:
    """Check the drop of clinic-local day ``day`` against the database; nothing is written but the log."""
    t0 = time.perf_counter()
    settings = get_settings()
    day = parse_day(day)
    folder = Path(folder) if folder else settings.drop_dir(day)
    engine = engine or db.make_engine()
    report = Report(DROP, day, source=str(folder))
    with _could_not_run(engine, report, record):
        if not folder.is_dir():
            raise CannotRun(f"the drop folder {folder} is missing: nothing to validate for {day}")
        _require_schema(engine)
        _validate_drop(report, folder, engine, settings.clinic_tz, day, allow_empty)
    return _finish(report, engine, t0, record, settings.validation_dir / f"validation_{day.isoformat()}.json")


def _validate_drop(report: Report, folder: Path, engine, tz, day: dt.date, allow_empty: bool) -> None:
    frames = {}
    _MEMO.d = {}
    try:
        for table in list(DROP_FILES) + ["physio_hours"]:
            frame = _read_file(folder / f"{table}.csv", table, report)
            if frame is not None:
                frames[table] = _Cols(frame)
                _check_values(table, frames[table], report)
        staged = _stage_frames(frames, tz, day, report)
    finally:
        _MEMO.d = None
    day_text = day.isoformat()
    n_day = 0
    if "appointments" in staged:
        n_day += int((staged["appointments"]["local_date"] == day_text).sum())
    if "payments" in staged:
        n_day += int((staged["payments"]["paid_date"] == day_text).sum())
    if n_day == 0 and not allow_empty and "appointments" in frames and "payments" in frames \
            and is_clinic_day(engine, day):
        # the refresh's rule and words (refresh_day): an empty export of a working day is more
        # often a broken export than a quiet day
        report.add("drop.no_rows_for_day", [{"file": "appointments.csv", "day": day_text,
                                             "problem": NO_ROWS_FOR_DAY.format(day=day_text)}])
    day_start, day_end = local_day_bounds_utc(day, tz)
    params = {"day": day_text, "horizon": day_end, "day_start": day_start, "day_end": day_end,
              "factor": payment_max_factor()}
    with engine.connect() as conn:
        trans = conn.begin()
        try:
            # Rows a later drop already wrote are left alone by the refresh (source_day): check the
            # drop as the refresh will apply it, so re-running an old day is not a false alarm.
            for table in VERSIONED_TABLES:
                if table in staged and len(staged[table]):
                    frame = staged[table]
                    staged[table] = frame[~newer_in_database(conn, table, frame, day_text).to_numpy()]
            _drop_sql_checks(conn, report, staged, params)
            blocks = read_blocks(conn)
        finally:
            trans.rollback()  # the TEMP tables go with it: nothing of the drop stays in the database
    if "appointments" in staged:
        # the roster as the refresh will leave it: the drop's hours from this day on, and none
        # after this day for the physios it marks as gone (roster.py)
        hours = staged.get("physio_hours")
        if hours is not None:
            hours = hours.dropna(subset=["physio_id", "weekday"])
        blocks.update(apply_drop(blocks, day, hours, _leavers(frames.get("physios"))))
        hours = roster_frame(blocks)
        a = staged["appointments"]
        out = roster_outside(a[a["status"].isin(ACTIVE) & (a["local_date"].astype(str) >= day_text)], hours)
        if len(out):
            report.add("roster.outside", [
                {"file": "appointments.csv", "line": int(r.line), "column": "appt_start",
                 "appointment_id": r.appointment_id, "physio_id": r.physio_id, "local_date": r.local_date,
                 "local_start": r.local_start, "local_end": r.local_end} for r in out.head(MAX_EXAMPLES).itertuples()],
                count=len(out))


def _leavers(physios) -> list[int]:
    """The physios a drop's physios.csv marks inactive."""
    if physios is None or "active" not in physios:
        return []
    ids, active = _ids(physios, "physio_id"), _strip(physios["active"])
    return [int(i) for i in ids[(active == "0") & ids.notna()]]


def _drop_sql_checks(conn, report: Report, staged: dict, params: dict) -> None:
    names = {"patients": "vstg_patients", "physios": "vstg_physios", "physio_hours": "vstg_hours",
             "appointments": "vstg_appointments", "payments": "vstg_payments"}
    for table, name in names.items():
        _stage(conn, name, table, staged.get(table))
    for name, col in (("vstg_patients", "patient_id"), ("vstg_physios", "physio_id"), ("vstg_hours", "physio_id"),
                      ("vstg_appointments", "appointment_id"), ("vstg_appointments", "physio_id, appt_start"),
                      ("vstg_appointments", "patient_id, appt_start"), ("vstg_payments", "payment_id"),
                      ("vstg_payments", "appointment_id")):
        conn.exec_driver_sql(f"CREATE INDEX {name}_{col.split(',')[0]} ON {name} ({col})")
    sqlite = db.is_sqlite(conn)
    day = _date_param(conn, "day")
    horizon = _instant_param(conn, "horizon")
    have_appts, have_pays = "appointments" in staged, "payments" in staged

    if have_appts:
        checks = [(cid, cond.format(horizon=horizon), col, k) for cid, cond, col, k in APPOINTMENT_ROW_CHECKS]
        _row_checks(conn, report, "vstg_appointments a", checks, "appointments.csv", params, extra_cols="a.line, ")
        # orphans (unknown in the drop and in the database)
        for check_id, col, parent, stg in (("orphan.patient", "patient_id", "patients", "vstg_patients"),
                                           ("orphan.physio", "physio_id", "physios", "vstg_physios")):
            rows = _rows(conn, f"""
                SELECT a.line, a.appointment_id, a.{col} AS value FROM vstg_appointments a
                WHERE a.{col} IS NOT NULL
                  AND NOT EXISTS (SELECT 1 FROM {stg} s WHERE s.{col} = a.{col})
                  AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.{col} = a.{col})
                ORDER BY a.line""")
            if rows:
                report.add(check_id, [_example(r, "appointments.csv", col) for r in rows])
        # a booking after D with a physio who has left, as the drop says or else the database
        rows = _rows(conn, f"""
            SELECT a.line, a.appointment_id, a.physio_id AS value, a.local_date FROM vstg_appointments a
            WHERE a.status = 'booked' AND a.local_date > {day} AND a.physio_id IS NOT NULL
              AND COALESCE((SELECT s.active FROM vstg_physios s WHERE s.physio_id = a.physio_id),
                           (SELECT p.active FROM physios p WHERE p.physio_id = a.physio_id)) = 0
            ORDER BY a.line""", **params)
        if rows:
            report.add("physio.inactive", [_example(r, "appointments.csv", "physio_id") for r in rows])
        # ids the database uses for something else
        rows = _rows(conn, """
            SELECT s.line, s.appointment_id, s.patient_id AS value, a.patient_id AS patient_id_in_database
            FROM vstg_appointments s JOIN appointments a ON a.appointment_id = s.appointment_id
            WHERE s.patient_id IS NOT NULL AND a.patient_id <> s.patient_id ORDER BY s.line""")
        if rows:
            report.add("id.conflict_with_db", [_example(r, "appointments.csv", "patient_id") for r in rows])
    if "physio_hours" in staged:
        rows = _rows(conn, """
            SELECT h.line, h.physio_id AS value FROM vstg_hours h
            WHERE NOT EXISTS (SELECT 1 FROM vstg_physios s WHERE s.physio_id = h.physio_id)
              AND NOT EXISTS (SELECT 1 FROM physios p WHERE p.physio_id = h.physio_id) ORDER BY h.line""")
        if rows:
            report.add("orphan.physio", [_example(r, "physio_hours.csv", "physio_id") for r in rows])
    if have_pays:
        rows = _rows(conn, """
            SELECT s.line, s.payment_id, s.appointment_id AS value, p.appointment_id AS appointment_id_in_database
            FROM vstg_payments s JOIN payments p ON p.payment_id = s.payment_id
            WHERE s.appointment_id IS NOT NULL AND p.appointment_id <> s.appointment_id ORDER BY s.line""")
        if rows:
            report.add("id.conflict_with_db", [_example(r, "payments.csv", "appointment_id") for r in rows])
        rows = _rows(conn, f"""
            SELECT s.line, s.payment_id, s.appointment_id AS value FROM vstg_payments s
            WHERE s.appointment_id IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM vstg_appointments a WHERE a.appointment_id = s.appointment_id)
              AND NOT EXISTS (SELECT 1 FROM appointments a WHERE a.appointment_id = s.appointment_id
                              AND a.local_date <> {day}) ORDER BY s.line""", **params)
        if rows:
            report.add("orphan.appointment", [_example(r, "payments.csv", "appointment_id") for r in rows])
    # payments in the database that would lose their appointment: the drop removes it from day D
    if have_appts:
        rows = _rows(conn, f"""
            SELECT p.payment_id, p.appointment_id, a.local_date FROM payments p
            JOIN appointments a ON a.appointment_id = p.appointment_id
            WHERE a.local_date = {day} AND p.paid_date <> {day}
              AND NOT EXISTS (SELECT 1 FROM vstg_appointments s WHERE s.appointment_id = a.appointment_id)
            ORDER BY p.payment_id""", **params)
        if rows:
            report.add("orphan.appointment", [
                {"file": "appointments.csv", "line": None, "column": "appointment_id", "payment_id": r["payment_id"],
                 "value": r["appointment_id"], "problem": "the drop removes this appointment of D but the "
                 "database holds a payment of another day for it"} for r in rows])

    # the context of the payment checks: the drop's appointments, and the database's that the
    # drop's payments are for, as they will be after the refresh (day D's are replaced)
    conn.execute(sa.text(f"""
        CREATE TEMP TABLE vctx_appointments AS
        SELECT appointment_id, patient_id, physio_id, appt_start, appt_end, status, price_estimate_cents,
               local_date, line, 1 AS from_drop FROM vstg_appointments
        UNION ALL
        SELECT a.appointment_id, a.patient_id, a.physio_id, a.appt_start, a.appt_end, a.status,
               a.price_estimate_cents, a.local_date, NULL, 0 FROM appointments a
        WHERE a.appointment_id IN (SELECT appointment_id FROM vstg_payments) AND a.local_date <> {day}
          AND NOT EXISTS (SELECT 1 FROM vstg_appointments s WHERE s.appointment_id = a.appointment_id)"""), params)
    conn.exec_driver_sql("CREATE INDEX vctx_a_id ON vctx_appointments (appointment_id)")
    conn.execute(sa.text(f"""
        CREATE TEMP TABLE vctx_payments AS
        SELECT payment_id, appointment_id, amount_cents, paid_at, line, 1 AS from_drop FROM vstg_payments
        UNION ALL
        SELECT p.payment_id, p.appointment_id, p.amount_cents, p.paid_at, NULL, 0 FROM payments p
        WHERE p.appointment_id IN (SELECT appointment_id FROM vstg_appointments
                                   UNION SELECT appointment_id FROM vstg_payments)
          AND p.paid_date <> {day}
          AND NOT EXISTS (SELECT 1 FROM vstg_payments s WHERE s.payment_id = p.payment_id)"""), params)
    if not sqlite:
        conn.exec_driver_sql("ANALYZE vctx_appointments")

    if have_appts:
        # Each drop appointment against the drop's others and against the database's that start on
        # its previous, same or next local date (one range probe of the database's per-day index
        # per appointment: less work than copying the database's rows of those dates into a
        # temporary table, indexing and probing it). The
        # database's rows that the refresh replaces (day D's, and those in the drop) are left out.
        active = "(" + ", ".join(f"'{status}'" for status in ACTIVE) + ")"
        day_start, day_end = _instant_param(conn, "day_start"), _instant_param(conn, "day_end")
        for check_id, col in (("overlap.physio", "physio_id"), ("overlap.patient", "patient_id")):
            pair = f"""x.line, x.appointment_id, x.{col}, x.appt_start, x.appt_end,
                       y.appointment_id AS other_appointment_id, y.appt_start AS other_start,
                       y.appt_end AS other_end"""
            probe = f"""y.{col} = x.{col} AND y.appt_start >= x.probe_start AND y.appt_start < x.probe_end
                        AND x.appt_start < y.appt_end"""
            rows = _rows(conn, f"""
                SELECT {pair}, 1 AS other_in_drop
                FROM vstg_appointments x JOIN vstg_appointments y ON {probe} AND x.appointment_id < y.appointment_id
                WHERE x.status IN {active} AND y.status IN {active}
                UNION ALL
                SELECT {pair}, 0 AS other_in_drop
                FROM vstg_appointments x JOIN appointments y ON {probe}
                WHERE x.status IN {active} AND y.status IN {active}
                  AND NOT (y.appt_start >= {day_start} AND y.appt_start < {day_end})
                  AND NOT EXISTS (SELECT 1 FROM vstg_appointments s WHERE s.appointment_id = y.appointment_id)
                ORDER BY line, other_appointment_id""", **params)
            if rows:
                report.add(check_id, [_example(r, "appointments.csv", "appt_start") for r in rows])
    if have_pays or have_appts:
        _payment_checks(conn, report, "vctx_payments", "vctx_appointments", params,
                        touched="(p.from_drop = 1 OR a.from_drop = 1)", file="payments.csv")


def _payment_checks(conn, report: Report, pays: str, appts: str, params: dict, touched: str = "1 = 1",
                    file: str | None = None, skip: frozenset = frozenset()) -> None:
    """Payments against their appointments: status, date, amount, duplicates (both scopes)."""
    in_drop = file is not None
    line = "p.line, " if in_drop else ""
    checks = [("payment.not_completed", "a.status <> 'completed'", "appointment_id"),
              ("payment.before_appointment", "p.paid_at < a.appt_start", "paid_at")]
    checks = [c for c in checks if c[0] not in skip]
    if checks:
        sums = ", ".join(f"SUM(CASE WHEN {cond} THEN 1 ELSE 0 END)" for _, cond, _ in checks)
        counts = conn.execute(sa.text(f"SELECT {sums} FROM {pays} p JOIN {appts} a "
                                      f"ON a.appointment_id = p.appointment_id WHERE {touched}"), params).one()
        for (check_id, cond, column), n in zip(checks, counts):
            if n:
                rows = _rows(conn, f"""
                    SELECT {line}p.payment_id, p.appointment_id, p.amount_cents, p.paid_at, a.status, a.appt_start
                    FROM {pays} p JOIN {appts} a ON a.appointment_id = p.appointment_id
                    WHERE {touched} AND {cond} ORDER BY {'p.line, ' if in_drop else ''}p.payment_id
                    LIMIT {MAX_EXAMPLES}""", **params)
                report.add(check_id, [_example(r, file, column) for r in rows], count=n)
    having_touched = "AND (MAX(p.from_drop) = 1 OR MAX(a.from_drop) = 1)" if in_drop else ""
    sql = f"""
        SELECT {'MIN(p.line) AS line, ' if in_drop else ''}p.appointment_id, a.price_estimate_cents,
               SUM(p.amount_cents) AS total_cents, COUNT(*) AS n_payments
        FROM {pays} p JOIN {appts} a ON a.appointment_id = p.appointment_id
        WHERE a.price_estimate_cents IS NOT NULL
        GROUP BY p.appointment_id, a.price_estimate_cents
        HAVING SUM(p.amount_cents) > :factor * a.price_estimate_cents {having_touched}"""
    _grouped(conn, report, "payment.too_much", sql, params, file, "amount")
    sql = f"""
        SELECT {'MAX(p.line) AS line, ' if in_drop else ''}p.appointment_id, p.amount_cents, p.paid_at,
               COUNT(*) AS n_payments, MIN(p.payment_id) AS payment_id, MAX(p.payment_id) AS other_payment_id
        FROM {pays} p {'' if not in_drop else f'LEFT JOIN {appts} a ON a.appointment_id = p.appointment_id'}
        GROUP BY p.appointment_id, p.amount_cents, p.paid_at
        HAVING COUNT(*) > 1 {'AND (MAX(p.from_drop) = 1 OR MAX(a.from_drop) = 1)' if in_drop else ''}"""
    _grouped(conn, report, "payment.duplicate", sql, params, file, "payment_id")


def _grouped(conn, report, check_id, sql, params, file, column) -> None:
    n = conn.execute(sa.text(f"SELECT COUNT(*) FROM ({sql}) g"), params).scalar()
    if n:
        order = "line" if file else "appointment_id"
        rows = _rows(conn, f"SELECT * FROM ({sql}) g ORDER BY {order} LIMIT {MAX_EXAMPLES}", **params)
        report.add(check_id, [_example(r, file, column) for r in rows], count=n)


def _day_text(values: pd.Series) -> pd.Series:
    """Dates (text, date objects or missing) as 'YYYY-MM-DD' text or None, for comparing."""
    return values.map(lambda v: None if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v)[:10])


def roster_outside(appts: pd.DataFrame, hours: pd.DataFrame) -> pd.DataFrame:
    """Appointments (with local_weekday/local_start/local_end, and local_date) that fit in no
    roster block of their physio holding on their day (valid_from .. valid_to, when ``hours``
    has them); physios without any roster row are skipped. Vectorised (merge), no row loop."""
    if appts.empty or hours.empty:
        return appts.iloc[0:0]
    a = appts[appts["physio_id"].notna() & appts["local_weekday"].notna()].copy()
    h = hours.astype({"physio_id": "int64", "weekday": "int64"})
    a = a[a["physio_id"].astype("int64").isin(h["physio_id"])]
    if a.empty:
        return a
    a["_k"] = np.arange(len(a))
    dated = "valid_from" in h.columns and "local_date" in a.columns
    m = a[["_k", "physio_id", "local_weekday", "local_start", "local_end"] + (["local_date"] if dated else [])].astype(
        {"physio_id": "int64", "local_weekday": "int64"}).merge(
        h, left_on=["physio_id", "local_weekday"], right_on=["physio_id", "weekday"], how="inner")
    fits = (m["start_time"].astype(str) <= m["local_start"].astype(str)) & (m["local_end"].astype(str) <= m["end_time"].astype(str))
    if dated:
        day, first, last = _day_text(m["local_date"]), _day_text(m["valid_from"]), _day_text(m["valid_to"])
        fits &= (first.isna() | (first <= day)).astype(bool) & (last.isna() | (last >= day)).astype(bool)
    inside = set(m.loc[fits, "_k"])
    return a[~a["_k"].isin(inside)].drop(columns="_k")


# --- database validation ---------------------------------------------------------------------------

def _enforced(conn) -> set[str]:
    """Names of the constraints and triggers the database enforces (validated ones on Postgres)."""
    if db.is_sqlite(conn):
        names = set()
        for (sql,) in conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND sql IS NOT NULL"):
            names |= set(re.findall(r"CONSTRAINT\s+\"?(\w+)", sql))
            if "PRIMARY KEY" in sql.upper():
                table = re.match(r"\s*CREATE\s+TABLE\s+\"?(\w+)", sql, re.I)
                if table:
                    names.add(f"pk_{table.group(1)}")
        names |= {n for (n,) in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        return names
    names = {n for (n,) in conn.exec_driver_sql("SELECT conname FROM pg_constraint WHERE convalidated")}
    names |= {f"pk_{t}" for (t,) in conn.exec_driver_sql(
        "SELECT conrelid::regclass::text FROM pg_constraint WHERE contype = 'p'")}
    names |= {f"fk_{t}_{c}" for t, c in conn.exec_driver_sql("""
        SELECT c.conrelid::regclass::text, a.attname FROM pg_constraint c
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)
        WHERE c.contype = 'f' AND c.convalidated""")}
    names |= {n for (n,) in conn.exec_driver_sql("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgenabled <> 'D'")}
    return names


def _db_tasks(report: Report, enforced: set[str], sqlite: bool, params: dict, today: str, tz,
              full: bool = False) -> list:
    """Independent units of work, each run on its own connection (in parallel on SQLite)."""
    def trusted(names) -> bool:
        return bool(names) and all(n in enforced for n in names)

    skipped: list[str] = []

    def keep(check_id, names):
        if trusted(names):
            skipped.append(f"{check_id} ({', '.join(names)})")
            return False
        return True

    horizon = _instant_param_for(sqlite, "horizon")
    row_checks = []
    for cid, cond, col, k in APPOINTMENT_ROW_CHECKS + DB_ONLY_APPOINTMENT_CHECKS:
        if cid == "time.outcome_in_future":  # only appointments from yesterday on can be in the future
            cond = f"a.local_date >= {_date_param_for(sqlite, 'yesterday')} AND " + cond
        if keep(cid, k):
            row_checks.append((cid, cond.format(horizon=horizon), col, k))
    if sqlite and full:
        for col in ("appt_start", "appt_end", "booked_at"):
            row_checks.append(("timestamp.format", f"a.{col} NOT GLOB {_CANONICAL}", col, ()))
        row_checks.append(("timestamp.format", f"a.canceled_at IS NOT NULL AND a.canceled_at NOT GLOB {_CANONICAL}",
                           "canceled_at", ()))
    tasks = []

    def appointment_rows(conn, out: Report):
        # one COUNT per condition (a plain scan each is cheaper than one scan evaluating all of them),
        # the condition on local_date uses its index
        for check in row_checks:
            _row_checks(conn, out, "appointments a", [check], None, params)

    for check_id, col in (("overlap.physio", "physio_id"), ("overlap.patient", "patient_id")):
        def overlap(conn, out: Report, check_id=check_id, col=col):
            # x overlaps a y that starts at or after x's start: one indexed range probe per row
            exists = f"""EXISTS (SELECT 1 FROM appointments y WHERE y.{col} = x.{col} AND y.status <> 'canceled'
                            AND y.appt_start >= x.appt_start AND y.appt_start < x.appt_end
                            AND y.appointment_id <> x.appointment_id)"""
            hint = ""
            if sqlite and conn.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?",
                                               (f"ix_appointments_{col[:-3]}_start",)).first():
                hint = f" INDEXED BY ix_appointments_{col[:-3]}_start"  # scan the covering index, not the table
            n = conn.execute(sa.text(f"SELECT COUNT(*) FROM appointments x{hint} WHERE x.status <> 'canceled' "
                                     f"AND x.{col} IS NOT NULL AND {exists}")).scalar()
            if n:
                rows = _rows(conn, f"""
                    SELECT x.appointment_id, x.{col}, x.appt_start, x.appt_end, y.appointment_id AS other_appointment_id,
                           y.appt_start AS other_start, y.appt_end AS other_end
                    FROM appointments x JOIN appointments y ON y.{col} = x.{col} AND y.status <> 'canceled'
                     AND y.appt_start >= x.appt_start AND y.appt_start < x.appt_end AND y.appointment_id <> x.appointment_id
                    WHERE x.status <> 'canceled' ORDER BY x.appointment_id, y.appointment_id LIMIT {MAX_EXAMPLES}""")
                out.add(check_id, rows, count=n)
        tasks.append(overlap)
    tasks.append(appointment_rows)

    orphan_defs = [("orphan.patient", "appointments", "appointment_id", "patient_id", "patients"),
                   ("orphan.physio", "appointments", "appointment_id", "physio_id", "physios"),
                   ("orphan.physio", "physio_hours", "weekday", "physio_id", "physios")]
    check_pay_orphans = sqlite or keep("orphan.appointment", ("fk_payments_appointment_id",))
    orphan_defs = [d for d in orphan_defs if sqlite or keep(d[0], (f"fk_{d[1]}_{d[3]}",))]

    def orphans(conn, out: Report):
        for check_id, child, key, col, parent in orphan_defs:
            # distinct referenced ids first (an index-only scan), then the anti-join on the few
            n = conn.execute(sa.text(f"""SELECT COUNT(*) FROM {child} c WHERE c.{col} IN (
                SELECT r.{col} FROM (SELECT DISTINCT {col} FROM {child} WHERE {col} IS NOT NULL) r
                WHERE NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.{col} = r.{col}))""")).scalar()
            if n:
                rows = _rows(conn, f"""SELECT c.{key}, c.{col} AS value FROM {child} c
                    WHERE c.{col} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.{col} = c.{col})
                    ORDER BY c.{key} LIMIT {MAX_EXAMPLES}""")
                out.add(check_id, [{"table": child, **r} for r in rows], count=n)
    tasks.append(orphans)

    pay_skip = frozenset(c for c, k in (("payment.not_completed", ("trg_payments_need_completed_insert",
                                                                    "trg_payments_need_completed_update",
                                                                    "trg_appointments_paid_stays_completed")
                                          if sqlite else ("trg_payments_need_completed",
                                                          "trg_appointments_paid_stays_completed")),)
                         if not keep(c, k))

    def payments(conn, out: Report):
        _db_payment_checks(conn, out, params, pay_skip, check_pay_orphans)
    tasks.append(payments)

    simple = [("payment.negative", "payments", "payment_id", "amount_cents", "amount_cents < 0",
               ("ck_payments_amount_non_negative",)),
              ("value.choice", "payments", "payment_id", "method",
               "method IS NULL OR method NOT IN ('cash', 'card', 'transfer', 'insurance')", ("ck_payments_method",)),
              ("value.choice", "patients", "patient_id", "gender",
               "gender IS NOT NULL AND gender NOT IN ('F', 'M', 'X')", ("ck_patients_gender",)),
              ("flag.invalid", "patients", "patient_id", "consent_form_received",
               "consent_form_received IS NULL OR consent_form_received NOT IN (0, 1)",
               ("ck_patients_consent_form_received_flag",)),
              ("flag.invalid", "patients", "patient_id", "reminder_consent",
               "reminder_consent IS NULL OR reminder_consent NOT IN (0, 1)", ("ck_patients_reminder_consent_flag",)),
              ("flag.invalid", "physios", "physio_id", "active", "active IS NULL OR active NOT IN (0, 1)",
               ("ck_physios_active_flag",))]
    for table, key in (("patients", "patient_id"), ("physios", "physio_id"), ("appointments", "appointment_id"),
                       ("payments", "payment_id")):
        if keep("id.duplicate", (f"pk_{table}",)):
            simple.append(("id.duplicate", table, key, key,
                           f"{key} IN (SELECT {key} FROM {table} GROUP BY {key} HAVING COUNT(*) > 1)", ()))
    simple = [s for s in simple if keep(s[0], s[5])]
    if sqlite and full:
        for table, key, col in (("payments", "payment_id", "paid_at"), ("patients", "patient_id", "created_at")):
            simple.append(("timestamp.format", table, key, col, f"{col} NOT GLOB {_CANONICAL}", ()))

    def small_tables(conn, out: Report):
        for check_id, table, key, col, cond, _ in simple:
            n = conn.execute(sa.text(f"SELECT COUNT(*) FROM {table} WHERE {cond}")).scalar()
            if n:
                rows = _rows(conn, f"SELECT {key}, {col} AS value FROM {table} WHERE {cond} ORDER BY {key} "
                                   f"LIMIT {MAX_EXAMPLES}")
                out.add(check_id, [{"table": table, "column": col, **r} for r in rows], count=n)
        _db_contacts(conn, out)
    tasks.append(small_tables)

    def inactive_physios(conn, out: Report):
        # booked from today on with a physio who has left (the local_date index, then the physio)
        cond = f"""a.status = 'booked' AND a.local_date >= {_date_param_for(sqlite, 'today')}
                   AND EXISTS (SELECT 1 FROM physios p WHERE p.physio_id = a.physio_id AND p.active = 0)"""
        n = conn.execute(sa.text(f"SELECT COUNT(*) FROM appointments a WHERE {cond}"), {"today": today}).scalar()
        if n:
            rows = _rows(conn, f"""SELECT a.appointment_id, a.physio_id AS value, a.local_date FROM appointments a
                WHERE {cond} ORDER BY a.appointment_id LIMIT {MAX_EXAMPLES}""", today=today)
            out.add("physio.inactive", [{"table": "appointments", "column": "physio_id", **r} for r in rows], count=n)
    tasks.append(inactive_physios)

    def roster(conn, out: Report):
        hours = roster_frame(read_blocks(conn))
        if hours.empty:
            return
        a = pd.read_sql(sa.text(f"""SELECT appointment_id, physio_id, appt_start, appt_end, local_date
            FROM appointments WHERE local_date >= {_date_param(conn, 'today')} AND status <> 'canceled'
            AND physio_id IS NOT NULL"""), conn, params={"today": today})
        if a.empty:
            return
        start = pd.to_datetime(a["appt_start"], utc=True, errors="coerce", format="ISO8601").dt.tz_convert(tz)
        end = pd.to_datetime(a["appt_end"], utc=True, errors="coerce", format="ISO8601").dt.tz_convert(tz)
        a = a.assign(local_weekday=start.dt.day_of_week.astype("Int64"), local_start=_strftime(start, "%H:%M"),
                     local_end=_strftime(end, "%H:%M").where(_strftime(end, "%Y-%m-%d") == _strftime(start, "%Y-%m-%d"),
                                                             "24:00"))
        bad = roster_outside(a, hours)
        if len(bad):
            out.add("roster.outside", [{"appointment_id": r.appointment_id, "physio_id": r.physio_id,
                                        "local_date": r.local_date, "local_start": r.local_start,
                                        "local_end": r.local_end} for r in bad.sort_values("appointment_id")
                                       .head(MAX_EXAMPLES).itertuples()], count=len(bad))
    tasks.append(roster)
    if skipped:
        report.notes.append("skipped, enforced by the database: " + "; ".join(skipped))
    return tasks


def _date_param_for(sqlite: bool, name: str) -> str:
    return f":{name}" if sqlite else f"CAST(:{name} AS DATE)"


def _db_payment_checks(conn, out: Report, params: dict, skip: frozenset, orphans: bool) -> None:
    """All payment checks of the whole database, counted per payment.

    One pass joins each payment to its appointment (covering index on payments, primary-key probe);
    the appointments with several payments (few) go to a TEMP table for totals and duplicates, so
    no pass groups the whole table by appointment and joins it again.
    """
    conds = [("orphan.appointment", "a.appointment_id IS NULL", orphans),
             ("payment.not_completed", "a.status <> 'completed'", "payment.not_completed" not in skip),
             ("payment.before_appointment", "p.paid_at < a.appt_start", True),
             ("payment.too_much", "p.amount_cents > :factor * a.price_estimate_cents", True)]
    conds = [(cid, cond) for cid, cond, run in conds if run]
    sums = ", ".join(f"SUM(CASE WHEN {cond} THEN 1 ELSE 0 END)" for _, cond in conds)
    joined = "payments p LEFT JOIN appointments a ON a.appointment_id = p.appointment_id"
    counts = dict(zip([c for c, _ in conds], conn.execute(sa.text(f"SELECT {sums} FROM {joined}"), params).one()))
    conn.exec_driver_sql("""CREATE TEMP TABLE vmulti AS SELECT appointment_id, SUM(amount_cents) AS total_cents,
                            COUNT(*) AS n_payments FROM payments GROUP BY appointment_id HAVING COUNT(*) > 1""")
    # too much: single payments above the limit (counted above, minus those of multi-payment appointments)
    # plus appointments whose several payments add up above it
    multi_hits = conn.execute(sa.text("""
        SELECT COUNT(*) FROM vmulti m JOIN payments p ON p.appointment_id = m.appointment_id
        JOIN appointments a ON a.appointment_id = m.appointment_id
        WHERE p.amount_cents > :factor * a.price_estimate_cents"""), params).scalar()
    multi_over = conn.execute(sa.text("""
        SELECT COUNT(*) FROM vmulti m JOIN payments p ON p.appointment_id = m.appointment_id
        JOIN appointments a ON a.appointment_id = m.appointment_id
        WHERE m.total_cents > :factor * a.price_estimate_cents"""), params).scalar()
    counts["payment.too_much"] = (counts["payment.too_much"] or 0) - multi_hits + multi_over
    for check_id, cond in conds:
        if check_id == "payment.too_much":
            cond = "(p.amount_cents > :factor * a.price_estimate_cents OR m.total_cents > :factor * a.price_estimate_cents)"
        if counts.get(check_id):
            rows = _rows(conn, f"""
                SELECT p.payment_id, p.appointment_id, p.amount_cents, p.paid_at, a.status, a.appt_start,
                       a.price_estimate_cents, m.total_cents AS total_cents_of_appointment
                FROM {joined} LEFT JOIN vmulti m ON m.appointment_id = p.appointment_id
                WHERE {cond} ORDER BY p.payment_id LIMIT {MAX_EXAMPLES}""", **params)
            out.add(check_id, rows, count=counts[check_id])
    dup = """SELECT p.appointment_id, p.amount_cents, p.paid_at, COUNT(*) AS n_payments,
                    MIN(p.payment_id) AS payment_id, MAX(p.payment_id) AS other_payment_id
             FROM vmulti m JOIN payments p ON p.appointment_id = m.appointment_id
             GROUP BY p.appointment_id, p.amount_cents, p.paid_at HAVING COUNT(*) > 1"""
    rows = _rows(conn, f"SELECT * FROM ({dup}) d ORDER BY appointment_id")
    if rows:
        out.add("payment.duplicate", rows[:MAX_EXAMPLES], count=len(rows))


def _instant_param_for(sqlite: bool, name: str) -> str:
    return f":{name}" if sqlite else f"CAST(:{name} AS TIMESTAMP WITH TIME ZONE)"


def validate_db(engine: sa.Engine | None = None, record: bool = True, full: bool = False,
                now: dt.datetime | None = None, workers: int | None = None) -> Report:
    """Check the whole database (set-based SQL); ``full=True`` also re-checks what constraints enforce."""
    t0 = time.perf_counter()
    settings = get_settings()
    engine = engine or db.make_engine()
    report = Report(DB, None, source=engine.url.render_as_string(hide_password=True))
    now = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    with _could_not_run(engine, report, record):
        _require_schema(engine)
        with engine.connect() as conn:
            enforced = set() if full else _enforced(conn)
            sqlite = db.is_sqlite(conn)
        local_today = now.astimezone(settings.clinic_tz).date()
        today = local_today.isoformat()
        params = {"horizon": now.strftime(ISO_FORMAT), "factor": payment_max_factor(),
                  "yesterday": (local_today - dt.timedelta(days=1)).isoformat()}
        tasks = _db_tasks(report, enforced, sqlite, params, today, settings.clinic_tz, full)
        # the longest first, so two workers finish together
        rank = {"payments": 0, "overlap": 1, "small_tables": 2, "appointment_rows": 3, "roster": 4, "orphans": 5}
        tasks.sort(key=lambda t: rank.get(t.__name__, 9))
        partials = [Report(DB) for _ in tasks]

        def run(i):
            with engine.connect() as conn:
                try:
                    tasks[i](conn, partials[i])
                finally:
                    conn.rollback()  # read-only: nothing to commit

        n_workers = workers or (2 if db.sqlite_file(engine) else 1)
        if n_workers > 1:
            # sqlite3 releases the GIL while a query runs: independent checks use both cores
            with ThreadPoolExecutor(max_workers=n_workers) as pool:
                list(pool.map(run, range(len(tasks))))
        else:
            for i in range(len(tasks)):
                run(i)
        for part in partials:
            for c in part.failed:
                report.add(c.id, c.examples, count=c.count)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return _finish(report, engine, t0, record, settings.validation_dir / f"validation_db_{stamp}.json")


# --- the record of a run ---------------------------------------------------------------------------

def _finish(report: Report, engine, t0: float, record: bool, path: Path) -> Report:
    report.finished_at = utc_now_text()
    report.seconds = round(time.perf_counter() - t0, 4)
    if record:
        path.parent.mkdir(parents=True, exist_ok=True)
        report.report_path = path
        tmp = path.with_suffix(".tmp")
        tmp.write_text(report.to_json(), encoding="utf-8")
        tmp.replace(path)
        _log_run(engine, report, report.status)
    return report


def _log_run(engine, report: Report, status: str, summary: str | None = None) -> None:
    with db.begin_write(engine) as conn:
        conn.execute(db.validation_runs.insert().values(
            scope=report.scope, day=report.day.isoformat() if report.day else None,
            started_at=report.started_at, finished_at=utc_now_text(), status=status,
            n_errors=sum(c.count for c in report.errors), n_warnings=sum(c.count for c in report.warnings),
            report_path=str(report.report_path) if report.report_path else None,
            summary=(summary or report.summary_text())[:4000]))


@contextlib.contextmanager
def _could_not_run(engine, report: "Report", record: bool):
    """A run that cannot start is logged (validation_runs, status failed) and raised as CannotRun."""
    try:
        yield
    except CannotRun as exc:
        if record:
            _record_failure(engine, report, str(exc))
        raise
    except sa.exc.OperationalError as exc:
        raise CannotRun(f"the database could not be read: {str(exc.orig).splitlines()[0]}") from exc


def _record_failure(engine, report: Report, message: str) -> None:
    """Log a run that could not happen, if the database can take the row (never raises)."""
    try:
        with engine.connect() as conn:
            if "validation_runs" not in sa.inspect(conn).get_table_names():
                return
        _log_run(engine, report, "failed", summary=message)
    except Exception:  # noqa: BLE001 - the original CannotRun is what the caller must see
        pass
