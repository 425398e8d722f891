"""The clinic's call history before Clinic Ops: evening lists and call outcomes in ``data/raw/``.

Two optional files of the initial load (UTF-8, comma-separated, a header row, columns in this order):

====================  ========================================================================
file                  columns
====================  ========================================================================
call_lists.csv        day (YYYY-MM-DD, the clinic day the list was for), rank (1 = called first),
                      appointment_id (an appointment of that day in appointments.csv),
                      risk_score (0..1: the risk the list was ranked by), holdout (0/1: held out
                      of the calls at random), built_at (when the list was made; with offset)
call_outcomes.csv     appointment_id, outcome (reached, voicemail, no_answer, confirmed,
                      rescheduled, canceled), recorded_at (with offset)
====================  ========================================================================

``clinic load`` imports them in the same transaction as the five clinic files: each list row
into ``priorities`` (so the call-effect analysis and the monitoring read old lists and the
chain's own lists alike: ``risk_source`` 'model', ``priority_score`` = ``risk_score``,
``is_new_patient`` = the appointment's first-visit flag, the phone and consent flags from the
patient, and the reason ``imported evening list``), each outcome into ``call_outcomes``. A bad
value or an appointment that is not in ``appointments.csv`` (or not on the list's day) stops the
load with the file, line and column, and nothing is written.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from clinic_lib.core import db
from clinic_lib.ingest.drop_format import DropError, _first, _flags, _ids, _instants, _utc_text, read_csv_text

CALL_HISTORY_COLUMNS = {
    "call_lists": ["day", "rank", "appointment_id", "risk_score", "holdout", "built_at"],
    "call_outcomes": ["appointment_id", "outcome", "recorded_at"],
}
IMPORTED_REASON = "imported evening list"


def _check_columns(name: str, frame: pd.DataFrame, file: str) -> None:
    expected = CALL_HISTORY_COLUMNS[name]
    if list(frame.columns) != expected:
        raise DropError(file, f"expected the columns {', '.join(expected)}, found {', '.join(map(str, frame.columns))}")


def parse_call_lists(frame: pd.DataFrame, file: str = "call_lists.csv") -> pd.DataFrame:
    _check_columns("call_lists", frame, file)
    day_text = frame["day"].str.strip()
    days = pd.to_datetime(day_text, errors="coerce", format="%Y-%m-%d")
    bad = days.isna()
    if bad.any():
        line, value = _first(frame, bad, "day")
        raise DropError(file, "expected a date YYYY-MM-DD", line=line, column="day", value=value)
    rank = _ids(frame, "rank", file)
    if (rank < 1).any():
        line, value = _first(frame, (rank < 1).to_numpy(), "rank")
        raise DropError(file, "expected a rank of 1 or more", line=line, column="rank", value=value)
    risk = pd.to_numeric(frame["risk_score"].str.strip(), errors="coerce")
    bad = ~((risk >= 0) & (risk <= 1))
    if bad.any():
        line, value = _first(frame, bad, "risk_score")
        raise DropError(file, "expected a risk from 0 to 1", line=line, column="risk_score", value=value)
    out = pd.DataFrame({"day": days.dt.strftime("%Y-%m-%d"), "rank": rank,
                        "appointment_id": _ids(frame, "appointment_id", file), "risk_score": risk.astype(float),
                        "holdout": _flags(frame, "holdout", file),
                        "built_at": _utc_text(_instants(frame, "built_at", file))})
    dup = out.duplicated(["day", "appointment_id"])
    if dup.any():
        line, value = _first(frame, dup, "appointment_id")
        raise DropError(file, "the appointment is on that day's list twice", line=line, column="appointment_id",
                        value=value)
    return out


def parse_call_outcomes(frame: pd.DataFrame, file: str = "call_outcomes.csv") -> pd.DataFrame:
    _check_columns("call_outcomes", frame, file)
    outcome = frame["outcome"].str.strip()
    bad = ~outcome.isin(db.CALL_OUTCOMES)
    if bad.any():
        line, value = _first(frame, bad, "outcome")
        raise DropError(file, f"expected one of {', '.join(db.CALL_OUTCOMES)}", line=line, column="outcome",
                        value=value)
    return pd.DataFrame({"appointment_id": _ids(frame, "appointment_id", file), "outcome": outcome,
                         "recorded_at": _utc_text(_instants(frame, "recorded_at", file))})


def read_call_history(folder: Path) -> dict[str, pd.DataFrame]:
    """The call-history files present in ``folder``, parsed (an absent file is no error)."""
    out = {}
    for name, parse in (("call_lists", parse_call_lists), ("call_outcomes", parse_call_outcomes)):
        path = Path(folder) / f"{name}.csv"
        if path.exists():
            out[name] = parse(read_csv_text(path), path.name)
    return out


def _known(frame: pd.DataFrame, ids: pd.Series, file: str) -> None:
    missing = ~ids.isin(frame["appointment_id"])
    if missing.any():
        pos = int(np.flatnonzero(missing.to_numpy())[0])
        raise DropError(file, "refers to an appointment that is not in appointments.csv", line=pos + 2,
                        column="appointment_id", value=ids.iloc[pos])


def import_call_history(conn, history: dict[str, pd.DataFrame], appointments: pd.DataFrame,
                        patients: pd.DataFrame, thresholds) -> int:
    """Write the parsed files into priorities and call_outcomes (the caller's transaction); the
    appointments and patients frames are the load's. Returns the rows written."""
    from clinic_lib.ingest.refresh import bulk_insert
    from clinic_lib.reception.priorities import HOLDOUT_REASON, _phone_missing, bucket_of
    written = 0
    appts = appointments[["appointment_id", "patient_id", "is_first_visit", "local_date"]]
    lists = history.get("call_lists")
    if lists is not None and len(lists):
        _known(appts, lists["appointment_id"], "call_lists.csv")
        rows = lists.merge(appts, on="appointment_id", how="left")
        other_day = (rows["local_date"].astype(str) != rows["day"]).to_numpy()
        if other_day.any():
            pos = int(np.flatnonzero(other_day)[0])
            raise DropError("call_lists.csv", f"the appointment is on {rows['local_date'].iloc[pos]}, not on the "
                            "list's day", line=pos + 2, column="appointment_id", value=rows["appointment_id"].iloc[pos])
        pat = patients.set_index("patient_id")
        phone = rows["patient_id"].map(pat["phone"])
        reason = np.where(rows["holdout"] == 1, HOLDOUT_REASON + IMPORTED_REASON, IMPORTED_REASON)
        frame = pd.DataFrame({
            "day": rows["day"], "appointment_id": rows["appointment_id"], "rank": rows["rank"],
            "patient_id": rows["patient_id"], "is_new_patient": rows["is_first_visit"].astype(int),
            "missing_phone": _phone_missing(phone).to_numpy(),
            "missing_consent": (rows["patient_id"].map(pat["consent_form_received"]).astype(int) == 0).astype(int),
            "risk_score": rows["risk_score"].round(4),
            "risk_bucket": [bucket_of(r, thresholds) for r in rows["risk_score"]],
            "risk_source": "model", "priority_score": rows["risk_score"].round(4), "priority_reason": reason,
            "built_at": rows["built_at"], "holdout": rows["holdout"].astype(int)})
        written += bulk_insert(conn, "priorities", frame[[c.name for c in db.priorities.columns]])
    calls = history.get("call_outcomes")
    if calls is not None and len(calls):
        _known(appts, calls["appointment_id"], "call_outcomes.csv")
        conn.execute(db.call_outcomes.insert(), [
            {"appointment_id": int(a), "outcome": o, "note": None, "recorded_at": r}
            for a, o, r in zip(calls["appointment_id"], calls["outcome"], calls["recorded_at"])])
        written += len(calls)
    return written

