"""Rules for single values of a drop's columns (ids, instants, flags, statuses, emails, phones), vectorised."""
from __future__ import annotations

import functools
import threading

import numpy as np
import pandas as pd
import pyarrow as pa

from clinic_lib.core import db, phones
from clinic_lib.core.config import get_settings
from clinic_lib.ingest.drop_format import (
    ID_COLUMN,
    MAX_EUROS,
    OFFSET_PATTERN,
    PLAIN_EUROS,
    PLAIN_ID,
    PLAIN_INSTANT,
    TIME_OF_DAY,
    id_values,
    plain_values,
)
from clinic_lib.validation.checks import CATALOGUE
from clinic_lib.validation.report import MAX_EXAMPLES, Report

STATUSES = db.APPOINTMENT_STATUSES


ACTIVE = ("booked", "completed", "no_show")  # statuses that occupy a slot


_TIME = TIME_OF_DAY  # the drop format's (ingest/drop_format.py), for fullmatch


_EMAIL = r"[^@\s,;<>\"]+@[^@\s,;<>\".]+(?:\.[^@\s,;<>\".]+)*\.[^@\s,;<>\".\d]{2,}"


def phone_region() -> str:
    return get_settings().phone_region


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
# 2026-03-30T09:00:00+02:00), recognised and converted in C by Arrow (drop_format.plain_values); a
# column with any other value goes the general way below, value by value. Ids and amounts follow
# the drop format's rules (drop_format.id_values, MAX_EUROS), the ones the load applies.


@_memo
def _plain_numbers(s: pd.Series) -> pd.Series | None:
    """Floats (NaN for empty) if every value is a plain amount, else None."""
    return plain_values(s, PLAIN_EUROS, False, pa.float64())


@_memo
def _id_values(s: pd.Series) -> pd.Series:
    """Int64 ids, exactly (<NA> for empty or not an id)."""
    return id_values(s)


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
    elif kind in ("pk", "id", "id_opt"):
        values = plain_values(s, PLAIN_ID, False, pa.int64())
    elif kind in ("price", "amount"):
        values = _plain_numbers(s)  # twelve digits before the point: below MAX_EUROS
    else:
        return False
    return values is not None and (kind in ("ts_opt", "id_opt", "price") or not values.isna().any())


def _ok_id(s):
    return (_strip(s) == "") | _id_values(s).notna()


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
    return (t == "") | (v.notna() & np.isfinite(v) & (v.abs() < MAX_EUROS))


def _ok_not_negative(s):
    return ~(_numbers(s) < 0)


def _ok_weekday(s):
    return _strip(s).isin([str(d) for d in range(7)])


def _ok_hhmm(s):
    return _strip(s).str.fullmatch(_TIME).fillna(False).astype(bool)


def email_ok(s: pd.Series) -> pd.Series:
    t = s.fillna("").astype(str).str.strip()
    return (t == "") | t.str.fullmatch(_EMAIL).fillna(False).astype(bool)


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
        ids = _id_values(frame[id_col])
        dup = ids.duplicated(keep="first") & ids.notna()
        if dup.any():
            report.add("id.duplicate_in_drop", [{"file": file, "line": int(line), "column": id_col,
                                                 "value": frame.at[line, id_col]} for line in frame.index[dup]])
    key = ["physio_id", "weekday", "start_time"]
    if table == "physio_hours" and all(c in frame.columns for c in key):
        # the roster's primary key: the refresh's insert would fail on the second block
        blocks = pd.DataFrame({c: _strip(frame[c]) for c in key})
        blocks["physio_id"] = _id_values(frame["physio_id"])
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
