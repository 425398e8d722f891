"""A drop in the database's form, tolerant (a bad value becomes NULL), staged in TEMP tables for the SQL checks."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from clinic_lib.core import db
from clinic_lib.core.timeutil import ISO_FORMAT, day_texts, local_day_bounds_utc, series_to_utc_text
from clinic_lib.ingest.drop_format import ID_COLUMN, MAX_EUROS
from clinic_lib.validation.report import Report
from clinic_lib.validation.values import _TIME, STATUSES, _id_values, _instants, _numbers, _ok_flag, _ok_weekday, _strip


def _ids(frame, col) -> pd.Series:
    if col not in frame.columns:
        return pd.Series(pd.NA, index=frame.index, dtype="Int64")
    return _id_values(frame[col])


def _cents(frame, col) -> pd.Series:
    if col not in frame.columns:
        return pd.Series(pd.NA, index=frame.index, dtype="Int64")
    v = _numbers(frame[col])
    ok = v.notna() & np.isfinite(v) & (v.abs() < MAX_EUROS)
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
