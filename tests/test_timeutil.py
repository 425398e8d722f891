"""Stored instants and local dates: the vectorised formatting equals Python's own, value by value."""
from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from clinic_lib.core.timeutil import series_local_date, series_to_utc_text, to_utc_text, utc_text_array

BERLIN = ZoneInfo("Europe/Berlin")


def test_utc_text_and_local_dates_by_hand_across_dst():
    instants = pd.Series(pd.to_datetime([
        "2026-03-29T01:59:59+01:00",  # last second of CET
        "2026-03-29T03:00:00+02:00",  # first of CEST: same UTC day, same local day
        "2026-10-25T02:30:00+02:00",  # the hour that happens twice: first time...
        "2026-10-25T02:30:00+01:00",  # ...and second time
        "2026-12-31T23:30:00+01:00",  # local New Year's Eve
        "2027-01-01T00:30:00+01:00",  # local New Year, UTC still the old year
        None], utc=True, format="ISO8601"), index=[10, 11, 12, 13, 14, 15, 16])
    assert series_to_utc_text(instants).tolist() == [
        "2026-03-29T00:59:59+00:00", "2026-03-29T01:00:00+00:00", "2026-10-25T00:30:00+00:00",
        "2026-10-25T01:30:00+00:00", "2026-12-31T22:30:00+00:00", "2026-12-31T23:30:00+00:00", None]
    assert series_local_date(instants, BERLIN).tolist() == [
        "2026-03-29", "2026-03-29", "2026-10-25", "2026-10-25", "2026-12-31", "2027-01-01", None]
    assert series_to_utc_text(instants).index.tolist() == list(range(10, 17))


def test_utc_text_equals_python_formatting_for_random_instants():
    rng = np.random.default_rng(5)
    seconds = rng.integers(-2_000_000_000, 4_000_000_000, 5000)  # 1906 .. 2096
    instants = pd.Series(pd.to_datetime(seconds, unit="s", utc=True))
    expected_text = [to_utc_text(dt.datetime.fromtimestamp(int(s), dt.timezone.utc)) for s in seconds]
    expected_day = [dt.datetime.fromtimestamp(int(s), BERLIN).date().isoformat() for s in seconds]
    assert series_to_utc_text(instants).tolist() == expected_text
    assert series_local_date(instants, BERLIN).tolist() == expected_day


def test_utc_text_the_same_whether_values_outnumber_the_days_of_their_span_or_not():
    """Many values in one year (a table row per day of the span) and a few over 90 years (a row
    per day present), both with gaps: the same text as Python's formatting."""
    rng = np.random.default_rng(11)
    dense = rng.integers(1_767_225_600, 1_798_761_600, 20_000)  # 2026 only: 365 days, 20,000 values
    sparse = np.array([-2_000_000_000, 0, 1_774_746_000, 4_000_000_000])  # 1906, 1970, 2026, 2096
    for seconds in (dense, sparse):
        instants = pd.Series(pd.to_datetime(seconds, unit="s", utc=True))
        instants.iloc[[1, -1]] = pd.NaT
        expected = [to_utc_text(dt.datetime.fromtimestamp(int(s), dt.timezone.utc)) for s in seconds]
        expected[1] = expected[-1] = None
        assert utc_text_array(instants).to_pylist() == expected


def test_utc_text_of_missing_and_empty_columns():
    """A column with gaps first and last, one with nothing but gaps, and an empty one."""
    gaps = pd.Series(pd.to_datetime([None, "2026-03-29T01:00:00Z", None], utc=True), index=[7, 8, 9])
    assert series_to_utc_text(gaps).to_dict() == {7: None, 8: "2026-03-29T01:00:00+00:00", 9: None}
    assert utc_text_array(gaps).to_pylist() == [None, "2026-03-29T01:00:00+00:00", None]
    assert series_to_utc_text(pd.Series(pd.to_datetime([None, None], utc=True))).tolist() == [None, None]
    assert series_to_utc_text(pd.Series(pd.to_datetime([], utc=True))).tolist() == []
