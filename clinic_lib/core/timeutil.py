"""Clinic-local time.

A "day" is a date in ``CLINIC_TZ``. Instants are stored in UTC as ISO 8601 text with an explicit
``+00:00`` (SQLite) or as ``timestamptz`` (Postgres); the clinic-local date of an appointment is
stored beside it, because a day's work is selected by that date, and across a DST change the UTC
date and the local date differ.
"""
from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from clinic_lib.core.errors import CannotRun

if TYPE_CHECKING:  # annotations only: the column functions import these where they run
    import numpy as np
    import pandas as pd
    import pyarrow as pa

UTC = dt.timezone.utc
ISO_FORMAT = "%Y-%m-%dT%H:%M:%S+00:00"


class BadDate(CannotRun, ValueError):
    """A day parameter that is not a real YYYY-MM-DD date."""


def parse_day(value) -> dt.date:
    """``'2026-03-29'`` -> date; anything else is a clear error naming the expected form."""
    if isinstance(value, dt.datetime):
        raise BadDate(f"expected a date YYYY-MM-DD, got a timestamp {value!r}")
    if isinstance(value, dt.date):
        return value
    text = str(value).strip()
    try:
        if len(text) != 10:
            raise ValueError
        return dt.date.fromisoformat(text)
    except ValueError:
        raise BadDate(f"expected a date YYYY-MM-DD, got {str(value)[:40]!r}") from None


def today_local(tz: ZoneInfo) -> dt.date:
    return dt.datetime.now(tz).date()


def local_day_bounds_utc(day: dt.date, tz: ZoneInfo) -> tuple[str, str]:
    """The UTC instants [start, end) of a clinic-local day, as stored text (23 or 25 h on DST days)."""
    start = dt.datetime.combine(day, dt.time(0), tzinfo=tz)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=tz)
    return to_utc_text(start), to_utc_text(end)


def to_utc_text(value: dt.datetime) -> str:
    if value.tzinfo is None:
        raise ValueError(f"timestamp without offset: {value!r}")
    return value.astimezone(UTC).strftime(ISO_FORMAT)


def utc_now_text() -> str:
    return dt.datetime.now(UTC).strftime(ISO_FORMAT)


def day_texts(days: np.ndarray) -> np.ndarray:
    """'YYYY-MM-DD' (object array) for integer days since 1970-01-01: each distinct day is
    formatted once, because a column of 0.8M instants covers only a few hundred days."""
    import numpy as np
    import pandas as pd
    codes, unique = pd.factorize(days)
    return np.datetime_as_string(unique.astype("datetime64[D]"), unit="D").astype(object)[codes]


_CLOCK_UTC: np.ndarray | None = None


def _clock_bytes_utc() -> np.ndarray:
    """b'THH:MM:SS+00:00' for each second of a day as rows of a (86400, 15) byte table, built once."""
    import numpy as np
    global _CLOCK_UTC
    if _CLOCK_UTC is None:
        text = "".join(f"T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}+00:00" for s in range(86400))
        _CLOCK_UTC = np.frombuffer(text.encode("ascii"), dtype=np.uint8).reshape(86400, 15)
    return _CLOCK_UTC


def utc_text_array(utc: pd.Series) -> pa.Array:
    """A tz-aware UTC datetime Series -> stored text as an Arrow string array (NaT -> null);
    instants are whole seconds."""
    # Each value's 25 bytes are copied from two tables, its day (one row per day of the span, or
    # per day present if that is fewer) and its second of the day: no per-value formatting or
    # Python string, faster than building Python strings for a large load's appointments, and
    # the initial load hands the Arrow array to SQLite as it is.
    import numpy as np
    import pyarrow as pa
    seconds = utc.dt.tz_convert(None).to_numpy(dtype="datetime64[s]")
    missing = np.isnat(seconds)
    whole = np.where(missing, 0, seconds.astype(np.int64))
    days, clock = np.divmod(whole, 86400)
    first, last = (int(days[~missing].min()), int(days[~missing].max())) if not missing.all() else (0, 0)
    if last - first < max(len(whole), 1):
        listed, row = np.arange(first, last + 1), days - first
    else:
        # fewer values than days in their span (a drop's few patients, created over 40 years):
        # a row for each day present, not for every day between (which grew a refresh with history)
        listed = np.unique(days[~missing])
        row = np.searchsorted(listed, days)
    names = np.datetime_as_string(listed.astype("datetime64[D]"), unit="D")
    if len(names[0]) != 10 or len(names[-1]) != 10:  # a year before 1 or after 9999
        raise ValueError(f"instant outside the years 0001-9999: {names[0]} .. {names[-1]}")
    day_bytes = np.frombuffer("".join(names).encode("ascii"), dtype=np.uint8).reshape(len(names), 10)
    text = np.empty((len(whole), 25), dtype=np.uint8)
    text[:, :10] = day_bytes[np.where(missing, 0, row)]
    text[:, 10:] = _clock_bytes_utc()[clock]
    valid = pa.array(~missing).buffers()[1] if missing.any() else None
    fixed = pa.FixedSizeBinaryArray.from_buffers(pa.binary(25), len(whole), [valid, pa.py_buffer(text)])
    return fixed.cast(pa.string())


def series_to_utc_text(utc: pd.Series) -> pd.Series:
    """A tz-aware UTC datetime Series -> stored text (NaT -> None); instants are whole seconds."""
    import pandas as pd
    return pd.Series(utc_text_array(utc).to_numpy(zero_copy_only=False), index=utc.index, dtype=object)


def series_local_date(utc: pd.Series, tz: ZoneInfo) -> pd.Series:
    """Clinic-local calendar date (``YYYY-MM-DD`` text) of UTC instants (NaT -> None)."""
    import numpy as np
    import pandas as pd
    local = utc.dt.tz_convert(tz).dt.tz_localize(None).to_numpy(dtype="datetime64[D]")
    missing = np.isnat(local)
    text = day_texts(np.where(missing, 0, local.astype(np.int64)))
    text[missing] = None
    return pd.Series(text, index=utc.index, dtype=object)


def read_instants(values: pd.Series) -> pd.Series:
    """Stored instants (text or timestamptz) -> tz-aware UTC Series."""
    import pandas as pd
    return pd.to_datetime(values, utc=True, format="ISO8601")
