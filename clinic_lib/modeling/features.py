"""Features of the cancellation-risk model, computed as of the scoring cutoff.

**Target.** An appointment "fails as booked" when it is a no-show, or a cancellation made less than
``LATE_CANCEL_HOURS`` (default 24) before its start. A cancellation without a recorded
``canceled_at`` counts as late (we cannot prove it was early). Appointments canceled earlier than
that are *not* training rows: they were off the list before anyone could phone about them.
Appointments still ``booked`` have no outcome yet and are not training rows either.

**Cutoff.** Reception phones the evening before, so an appointment's features are computed as of
the clinic-local midnight that starts its day (``cutoff``). Patient history counts ONLY
appointments that *ended* strictly before that instant, so same-day siblings (a patient's other
appointments of the same day) and anything later never count; ``tests/test_features.py`` proves it
by changing every outcome on or after a cutoff and comparing the features.

**Features** (``FEATURES``): lead time (days from booking to start, and its log), weekday, local
hour, first visit, physio, length in minutes, age in years and age band, the patient's prior counts (attended, no-shows, late
cancellations, early cancellations) and smoothed failure rates, whether the last finished
appointment failed, days since the last attended visit (capped at 365), age band as of the day
(``unknown`` without a date of birth), and whether an email reminder can reach the patient
(``reminder_consent`` and an email), whether a phone number and the consent form are on file,
and how many appointments the patient holds that day (siblings booked before the cutoff). Patient attributes (date of birth, consent, email) are the
values held now: the schema keeps no history of them.

History features are vectorised in numpy: outcomes are summed per (patient, end instant),
cumulated per patient and looked up for each appointment's cutoff with a binary search (strictly
earlier), so a million appointments take seconds and one day's scoring milliseconds.
"""
from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from clinic_lib.core import db
from clinic_lib.core.timeutil import read_instants

FEATURE_VERSION = 1
NUMERIC = ["lead_days", "lead_log", "same_day_booking", "hour", "length_min", "is_first_visit",
           "age_years", "same_day_count",
           "prior_n", "prior_completed", "prior_no_show", "prior_late_cancel", "prior_early_cancel",
           "prior_fail_rate", "prior_no_show_rate", "last_failed", "days_since_last_visit",
           "has_history", "reminder_reachable", "has_phone", "consent_form"]
CATEGORICAL = ["weekday", "physio", "age_band"]
FEATURES = NUMERIC + CATEGORICAL
HISTORY_FEATURES = ["prior_n", "prior_completed", "prior_no_show", "prior_late_cancel",
                    "prior_early_cancel", "prior_fail_rate", "prior_no_show_rate", "last_failed",
                    "days_since_last_visit", "has_history"]
AGE_BANDS = [(0, 18, "0-17"), (18, 30, "18-29"), (30, 45, "30-44"), (45, 65, "45-64"), (65, 200, "65+")]
AGE_BAND_LABELS = [b[2] for b in AGE_BANDS] + ["unknown"]
RATE_PRIOR, RATE_WEIGHT = 0.2, 1.0  # smoothed rate = (fails + weight*prior) / (n + weight)
DAYS_SINCE_CAP = 365.0
_KEY_SHIFT = 34  # (patient rank << 34) + epoch seconds: one sortable int64 key (seconds < 2**34)

APPT_COLUMNS = ["appointment_id", "patient_id", "physio_id", "appt_start", "appt_end", "booked_at",
                "status", "canceled_at", "is_first_visit", "local_date"]
HISTORY_COLUMNS = ["patient_id", "appt_start", "appt_end", "status", "canceled_at"]
PATIENT_COLUMNS = ["patient_id", "phone", "email", "consent_form_received", "reminder_consent",
                   "date_of_birth", "gender"]


# --- reading ----------------------------------------------------------------------------------

def _instants(values: pd.Series) -> pd.Series:
    if len(values) and not isinstance(values.dropna().iloc[0] if values.notna().any() else "", str):
        return pd.to_datetime(values, utc=True)  # Postgres via the driver: aware datetimes
    try:  # the stored form, 'YYYY-MM-DDTHH:MM:SS+00:00': a fixed format parses faster
        return pd.to_datetime(values, utc=True, format="%Y-%m-%dT%H:%M:%S%z")
    except (ValueError, TypeError):
        return read_instants(values)


def _day_text(values: pd.Series) -> pd.Series:
    if len(values) and not isinstance(values.iloc[0], str):
        return values.map(lambda d: d.isoformat()).astype(object)
    return values.astype(object)


def _normalise_appointments(a: pd.DataFrame) -> pd.DataFrame:
    a = a.copy()
    for col in ("appt_start", "appt_end", "booked_at", "canceled_at"):
        a[col] = _instants(a[col]) if len(a) else pd.Series(pd.DatetimeIndex([], tz="UTC"), index=a.index)
    a["local_date"] = _day_text(a["local_date"])
    a["appointment_id"] = a["appointment_id"].astype("int64")
    a["patient_id"] = a["patient_id"].astype("int64")
    a["physio_id"] = pd.to_numeric(a["physio_id"]).astype("Int64")
    a["is_first_visit"] = a["is_first_visit"].astype("int64")
    a["status"] = a["status"].astype(object)
    return a


def _normalise_patients(p: pd.DataFrame) -> pd.DataFrame:
    p = p.copy()
    p["patient_id"] = p["patient_id"].astype("int64")
    p["date_of_birth"] = p["date_of_birth"].map(
        lambda d: None if d is None or (isinstance(d, float) and np.isnan(d))
        else (d if isinstance(d, str) else d.isoformat())).astype(object)
    p["reminder_consent"] = pd.to_numeric(p["reminder_consent"]).fillna(0).astype("int64")
    p["consent_form_received"] = pd.to_numeric(p["consent_form_received"]).fillna(0).astype("int64")
    return p


def _select(conn, table: str, columns: list[str], where: str | None, params) -> pd.DataFrame:
    """Plain driver SQL on the connection's DB-API cursor: plain tuples, no per-value type
    processing (much faster for a million rows than SQLAlchemy's rows).

    ``where`` uses ``?`` placeholders; they become ``%s`` on Postgres. Values bound as ISO text
    (dates, instants) are compared by Postgres after an implicit cast from unknown."""
    sql = f"SELECT {', '.join(columns)} FROM {table}" + (f" WHERE {where}" if where else "")
    if params and not db.is_sqlite(conn):
        sql = sql.replace("%", "%%").replace("?", "%s")
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql, tuple(params)) if params else cursor.execute(sql)
        rows = cursor.fetchall()
    finally:
        cursor.close()
    if not rows:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})
    # One 2-D object array sliced by column: faster than transposing the tuples in Python.
    grid = np.empty((len(rows), len(columns)), dtype=object)
    grid[:] = rows
    return pd.DataFrame({c: pd.Series(grid[:, i], dtype=object) for i, c in enumerate(columns)})


def read_appointments(conn, where: str | None = None, params=()) -> pd.DataFrame:
    """Appointments (``APPT_COLUMNS``) matching a raw SQL condition, instants parsed to UTC."""
    return _normalise_appointments(_select(conn, "appointments", APPT_COLUMNS, where, params))


def read_history(conn, where: str, params=()) -> pd.DataFrame:
    """Only what the history features read (``HISTORY_COLUMNS``): a lighter query for scoring."""
    h = _select(conn, "appointments", HISTORY_COLUMNS, where, params)
    for col in ("appt_start", "appt_end", "canceled_at"):
        h[col] = _instants(h[col]) if len(h) else pd.Series(pd.DatetimeIndex([], tz="UTC"), index=h.index)
    h["patient_id"] = h["patient_id"].astype("int64")
    h["status"] = h["status"].astype(object)
    return h


def read_patients(conn, ids=None) -> pd.DataFrame:
    if ids is None:
        return _normalise_patients(_select(conn, "patients", PATIENT_COLUMNS, None, ()))
    ids = [int(i) for i in pd.unique(pd.Series(ids))]
    parts = [_select(conn, "patients", PATIENT_COLUMNS, f"patient_id IN ({', '.join('?' * len(chunk))})", chunk)
             for chunk in (ids[i:i + 900] for i in range(0, len(ids), 900))]
    frame = pd.concat(parts, ignore_index=True) if parts else _select(conn, "patients", PATIENT_COLUMNS, "1 = 0", ())
    return _normalise_patients(frame)


# --- target -----------------------------------------------------------------------------------

def outcome_flags(a: pd.DataFrame, late_cancel_hours: float) -> pd.DataFrame:
    """completed / no_show / late_cancel / early_cancel flags (booked rows: all False)."""
    canceled = (a["status"] == "canceled").to_numpy()
    notice_h = ((a["appt_start"] - a["canceled_at"]).dt.total_seconds() / 3600.0).to_numpy()
    late = canceled & (np.isnan(notice_h) | (notice_h < late_cancel_hours))
    return pd.DataFrame({
        "completed": (a["status"] == "completed").to_numpy(),
        "no_show": (a["status"] == "no_show").to_numpy(),
        "late_cancel": late,
        "early_cancel": canceled & ~late,
    }, index=a.index)


def label(a: pd.DataFrame, late_cancel_hours: float) -> tuple[pd.Series, pd.Series]:
    """(target, eligible): target = no-show or late cancellation; eligible = has a training outcome."""
    f = outcome_flags(a, late_cancel_hours)
    target = f["no_show"] | f["late_cancel"]
    eligible = f["completed"] | target
    return target.astype(int), eligible


# --- features ---------------------------------------------------------------------------------

def day_cutoffs(local_dates: pd.Series, tz: ZoneInfo) -> pd.Series:
    """The UTC instant of the clinic-local midnight that starts each date (computed per unique date)."""
    uniq = pd.unique(local_dates)
    starts = {}
    for d in uniq:
        day = dt.date.fromisoformat(d)
        local = pd.Timestamp(dt.datetime.combine(day, dt.time(0))).tz_localize(
            tz, ambiguous=True, nonexistent="shift_forward")
        starts[d] = local.tz_convert("UTC")
    return pd.to_datetime(local_dates.map(starts), utc=True)


def _epoch_s(s: pd.Series) -> np.ndarray:
    """tz-aware instants -> int64 seconds since the epoch (NaT -> min int)."""
    return (s.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[s]")
            .astype("int64").to_numpy())


def history_features(targets: pd.DataFrame, history: pd.DataFrame, cutoff: pd.Series,
                     late_cancel_hours: float) -> pd.DataFrame:
    """Prior counts of each target's patient, from ``history`` rows that ended before its cutoff.

    In numpy, on one sorted key per (patient, end instant): outcomes of equal instants are summed
    into one group, cumulated per patient, and each target takes the last group of its patient
    strictly before its cutoff (a binary search on the same key)."""
    h = history[(history["status"] != "booked").to_numpy()]
    flags = outcome_flags(h, late_cancel_hours)[["completed", "no_show", "late_cancel", "early_cancel"]]
    rank = pd.factorize(np.concatenate([h["patient_id"].to_numpy(dtype=np.int64),
                                        targets["patient_id"].to_numpy(dtype=np.int64)]))[0].astype(np.int64)
    key = (rank[:len(h)] << _KEY_SHIFT) + _epoch_s(h["appt_end"])
    order = np.argsort(key, kind="stable")
    key = key[order]
    groups, first = np.unique(key, return_index=True)
    sums = np.add.reduceat(flags.to_numpy(dtype=np.int64)[order], first, axis=0) if len(first) else \
        np.zeros((0, 4), dtype=np.int64)
    n_groups = len(groups)
    patient = groups >> _KEY_SHIFT
    t = (groups - (patient << _KEY_SHIFT)).astype(float)
    at = np.arange(n_groups)
    # Each group's patient's first group: the cumulated counts restart there.
    pstart = np.maximum.accumulate(np.where(np.r_[True, patient[1:] != patient[:-1]], at, 0)) if n_groups else at
    cs = np.cumsum(sums, axis=0)
    cum = cs - cs[pstart] + sums[pstart]
    fail = sums[:, 1] + sums[:, 2]
    # "last finished appointment failed": the patient's last instant with an expected outcome.
    last_expected = np.maximum.accumulate(np.where(sums[:, 0] + fail > 0, at, -1)) if n_groups else at
    last_failed = np.where(last_expected >= pstart, fail[last_expected] > 0, False).astype(float)
    last_visit = np.maximum.accumulate(np.where(sums[:, 0] > 0, at, -1)) if n_groups else at
    last_visit_t = np.where(last_visit >= pstart, t[last_visit], np.nan)

    target_rank = rank[len(h):]
    query = (target_rank << _KEY_SHIFT) + _epoch_s(cutoff)
    ask = np.argsort(query, kind="stable")  # sorted queries: a cache-friendly search
    pos = np.empty(len(query), dtype=np.int64)
    pos[ask] = np.searchsorted(groups, query[ask], side="left") - 1
    found = pos >= 0
    found[found] = patient[pos[found]] == target_rank[found]
    pick = np.where(found, pos, 0)

    def take(values, empty=0.0):
        return np.where(found, values[pick], empty) if n_groups else np.full(len(targets), empty)

    completed, no_show = take(cum[:, 0].astype(float)), take(cum[:, 1].astype(float))
    late, early = take(cum[:, 2].astype(float)), take(cum[:, 3].astype(float))
    n = completed + no_show + late
    days_since = (_epoch_s(targets["appt_start"]) - take(last_visit_t, np.nan)) / 86400.0
    days_since = np.where(np.isnan(days_since), DAYS_SINCE_CAP, np.minimum(days_since, DAYS_SINCE_CAP))
    return pd.DataFrame({
        "prior_n": n, "prior_completed": completed, "prior_no_show": no_show, "prior_late_cancel": late,
        "prior_early_cancel": early,
        "prior_fail_rate": (no_show + late + RATE_WEIGHT * RATE_PRIOR) / (n + RATE_WEIGHT),
        "prior_no_show_rate": (no_show + RATE_WEIGHT * RATE_PRIOR) / (n + RATE_WEIGHT),
        "last_failed": take(last_failed),
        "days_since_last_visit": days_since,
        "has_history": (n + early > 0).astype(float),
    }, index=targets.index)


def same_day_count(targets: pd.DataFrame, history: pd.DataFrame, cutoff: pd.Series) -> np.ndarray:
    """How many appointments the patient holds on the same local day, this one included.

    Siblings count only if booked before the cutoff (what the evening list would show), whatever
    their status (a status is an outcome; the bookings themselves are known)."""
    cols = ["appointment_id", "patient_id", "local_date", "booked_at"]
    both = pd.concat([targets[cols], history[cols]]).drop_duplicates("appointment_id")
    first = ~targets["local_date"].duplicated().to_numpy()
    cut_s = _epoch_s(cutoff)
    cut_by_day = pd.Series(cut_s[first], index=targets["local_date"].to_numpy()[first])
    day_cut = both["local_date"].map(cut_by_day).to_numpy(dtype=float)  # NaN: not a target's day
    known = both[~np.isnan(day_cut) & (_epoch_s(both["booked_at"]) < day_cut)]
    counts = known.groupby(["patient_id", "local_date"]).size().rename("n")
    keys = pd.MultiIndex.from_arrays([targets["patient_id"], targets["local_date"]])
    n_before = counts.reindex(keys).fillna(0).to_numpy(dtype=float)
    self_before = (_epoch_s(targets["booked_at"]) < cut_s).astype(float)
    return n_before - self_before + 1.0


def age_band_of(years) -> np.ndarray:
    """The band of each age in years (``unknown`` for NaN)."""
    years = np.asarray(years, float)
    out = np.full(len(years), "unknown", dtype=object)
    for lo, hi, name in AGE_BANDS:
        out[(years >= lo) & (years < hi)] = name
    return out


def _present(values: pd.Series) -> pd.Series:
    text = values.astype(str)
    return values.notna() & (text.str.strip() != "") & (text != "None")


def patient_attributes(patients: pd.DataFrame) -> pd.DataFrame:
    """Per patient (index patient_id): what the features read of the patient, as numbers."""
    p = patients.drop_duplicates("patient_id")
    born = pd.to_datetime(p["date_of_birth"], errors="coerce", format="%Y-%m-%d")
    consent = pd.to_numeric(p["reminder_consent"]).fillna(0).astype(int)
    return pd.DataFrame({
        "reminder_reachable": ((consent == 1) & _present(p["email"])).astype(float).to_numpy(),
        "has_phone": _present(p["phone"]).astype(float).to_numpy(),
        "consent_form": pd.to_numeric(p["consent_form_received"]).fillna(0).astype(float).to_numpy(),
        "born_year": born.dt.year.astype(float).to_numpy(),
        "born_md": (born.dt.month * 100 + born.dt.day).astype(float).to_numpy(),
    }, index=p["patient_id"].to_numpy())


def _ages(born_year: np.ndarray, born_md: np.ndarray, local_date: pd.Series) -> np.ndarray:
    """Whole years of age on each local date (NaN without a date of birth)."""
    codes, days = pd.factorize(local_date)
    day = pd.to_datetime(pd.Series(days), format="%Y-%m-%d")
    year = day.dt.year.to_numpy(float)[codes]
    md = (day.dt.month * 100 + day.dt.day).to_numpy(float)[codes]
    return year - born_year - (md < born_md)


WEEKDAY_NAMES = np.array([str(d) for d in range(7)], dtype=object)


def build_features(targets: pd.DataFrame, history: pd.DataFrame, patients: pd.DataFrame,
                   tz: ZoneInfo, late_cancel_hours: float, same_day: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row of ``FEATURES`` per row of ``targets`` (same index).

    ``history`` holds the appointments the patient-history features may look at (training passes
    every appointment; scoring passes the day's patients' earlier ones): only rows that ended
    before each target's cutoff are counted, whatever else is passed in. ``same_day`` (default:
    ``history``) holds the rows counted as same-day siblings (every status of the targets' days).
    """
    if targets.empty:
        return pd.DataFrame({c: pd.Series(dtype=float if c in NUMERIC else object) for c in FEATURES})
    cutoff = day_cutoffs(targets["local_date"], tz)
    start, booked = targets["appt_start"], targets["booked_at"]
    local_start = start.dt.tz_convert(tz)
    lead = ((start - booked).dt.total_seconds() / 86400.0).clip(lower=0).to_numpy()
    # One lookup of every patient attribute (unknown patients: nothing on file, age unknown).
    who = patient_attributes(patients).reindex(targets["patient_id"].to_numpy())
    out = pd.DataFrame({
        "lead_days": lead,
        "lead_log": np.log1p(lead),
        "same_day_booking": (booked >= cutoff).astype(float).to_numpy(),
        "hour": (local_start.dt.hour + local_start.dt.minute / 60.0).to_numpy(),
        "length_min": ((targets["appt_end"] - start).dt.total_seconds() / 60.0).to_numpy(),
        "is_first_visit": targets["is_first_visit"].astype(float).to_numpy(),
    }, index=targets.index)
    out = out.join(history_features(targets, history, cutoff, late_cancel_hours))
    for col in ("reminder_reachable", "has_phone", "consent_form"):
        out[col] = who[col].fillna(0.0).to_numpy()
    out["weekday"] = WEEKDAY_NAMES[local_start.dt.day_of_week.to_numpy()]
    codes, physios = pd.factorize(targets["physio_id"])  # missing physio: code -1
    names = np.array([f"p{int(p)}" for p in physios] + ["none"], dtype=object)
    out["physio"] = names[codes]
    years = _ages(who["born_year"].to_numpy(), who["born_md"].to_numpy(), targets["local_date"])
    out["age_band"] = age_band_of(years)
    out["age_years"] = np.where(np.isnan(years), -1.0, years)
    out["same_day_count"] = same_day_count(targets, history if same_day is None else same_day, cutoff)
    return out[FEATURES]


def feature_frame(appts: pd.DataFrame, patients: pd.DataFrame, tz: ZoneInfo,
                  late_cancel_hours: float) -> pd.DataFrame:
    """Training table: features + target + eligible + local_date for every appointment given."""
    X = build_features(appts, appts, patients, tz, late_cancel_hours)
    y, eligible = label(appts, late_cancel_hours)
    X["target"] = y.to_numpy()
    X["eligible"] = eligible.to_numpy()
    X["local_date"] = appts["local_date"].to_numpy()
    X["appointment_id"] = appts["appointment_id"].to_numpy()
    gender = appts["patient_id"].map(patients.set_index("patient_id")["gender"]) if len(patients) else None
    X["gender"] = (gender.fillna("unknown").astype(object).to_numpy() if gender is not None else "unknown")
    return X


def with_all_columns(table: str, frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with every column of the table (columns it lacks, e.g. source_day, left NULL)."""
    missing = [c.name for c in db.metadata.tables[table].columns if c.name not in frame.columns]
    return frame.assign(**{c: None for c in missing}) if missing else frame
