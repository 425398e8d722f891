"""Reading the clinic's CSV columns: the quick way (Arrow, for columns in the usual plain form)
and the general way (any form the format allows, and the error for a bad value) agree."""
from __future__ import annotations

import io

import pandas as pd
import pytest

from clinic_lib.ingest import drop_format as dataset
from clinic_lib.ingest.drop_format import DropError

INSTANTS = ["2026-03-29T01:59:59+01:00", "2026-03-29T03:00:00+02:00",  # clocks go forward
            "2026-10-25T02:30:00+02:00", "2026-10-25T02:30:00+01:00",  # the hour that happens twice
            "2026-12-31T23:30:00Z", "2024-02-29T12:00:00-05:30", "1999-12-31T23:59:59+14:00",
            "2099-12-31T23:59:59-00:00"]


def column(name: str, values: list[str]) -> pd.DataFrame:
    """One column as the reader gives it (pyarrow's CSV reader, text)."""
    text = name + "\n" + "\n".join(f'"{v}"' for v in values) + "\n"
    return pd.read_csv(io.BytesIO(text.encode()), dtype=str, keep_default_na=False, engine="pyarrow")


@pytest.mark.parametrize("reader, name, plain, other_form, required", [
    (dataset._instants, "appt_start", INSTANTS, " 2026-01-01T00:00:00+00:00", True),
    (dataset._instants, "canceled_at", INSTANTS + [""], "2026-01-01T00:00:00+0000", False),
    (dataset._ids, "appointment_id", ["1", "0", "007", "999999999999999999"], " 12", True),
    (dataset._ids, "physio_id", ["1", "", "42"], "3 ", False),
    (dataset._cents, "price_estimate", ["65.00", "0", "0.1", "12.345"[:5], "99.99", ""], " 1.5", False),
    (dataset._cents, "amount", ["65.00", "0.05", "1000000"], "1e2", True),
])
def test_a_column_in_plain_form_reads_as_the_general_way_reads_it(reader, name, plain, other_form, required):
    assert dataset.plain_values(column(name, [other_form])[name], {
        dataset._instants: dataset.PLAIN_INSTANT, dataset._ids: dataset.PLAIN_ID,
        dataset._cents: dataset.PLAIN_EUROS}[reader], required, "string") is None  # not plain
    quick = reader(column(name, plain), name, "x.csv", required=required)
    general = reader(column(name, plain + [other_form]), name, "x.csv", required=required)
    assert quick.dtype == general.dtype
    assert quick.tolist() == general.iloc[:-1].tolist()


def test_utc_instants_by_hand():
    got = dataset._instants(column("t", INSTANTS[:5]), "t", "x.csv")
    assert [t.isoformat() for t in got] == [
        "2026-03-29T00:59:59+00:00", "2026-03-29T01:00:00+00:00", "2026-10-25T00:30:00+00:00",
        "2026-10-25T01:30:00+00:00", "2026-12-31T23:30:00+00:00"]


@pytest.mark.parametrize("value, message", [
    ("2026-02-30T10:00:00+01:00", "not an ISO 8601 timestamp"),  # plain form, but no such day
    ("2026-03-29T25:00:00+01:00", "not an ISO 8601 timestamp"),
    ("2026-03-29T09:00:00", "timestamp has no UTC offset"),
    ("", "a timestamp is required"),
])
def test_a_bad_instant_among_plain_ones_is_named_by_line(value, message):
    with pytest.raises(DropError, match=f"^appointments.csv line 4 column appt_start: {message}"):
        dataset._instants(column("appt_start", INSTANTS[:2] + [value] + INSTANTS[2:]), "appt_start",
                          "appointments.csv")


# One id rule for the load and the gate: the text, and the id it is (None: not an id).
ID_FORMS = [
    ("0", 0), ("007", 7), (" 12 ", 12), ("12.0", 12), ("12.", 12),  # spaces and a spreadsheet's ".0"
    ("999999999999999999", 10**18 - 1),  # eighteen digits: the quick form
    ("9007199254740993", 2**53 + 1),  # above 2**53, where floats would read 9007199254740992
    ("9223372036854775807", 2**63 - 1),  # the database's largest BIGINT
    ("9223372036854775808", None),
    ("-1", None), ("1.5", None), ("+12", None), ("x", None), ("12 3", None),
    ("1.23457E+11", None), ("1e3", None),  # a spreadsheet's rounding of a long id is not that id
]


@pytest.mark.parametrize("text, expected", ID_FORMS, ids=[t for t, _ in ID_FORMS])
def test_the_load_and_the_gate_read_an_id_alike(text, expected):
    from clinic_lib.validation.stage import _ids as staged_ids
    from clinic_lib.validation.values import _ok_id
    frame = column("payment_id", ["1", text])
    if expected is None:
        with pytest.raises(DropError, match="^payments.csv line 3 column payment_id: expected a whole non-negative"):
            dataset._ids(frame, "payment_id", "payments.csv")
    else:
        assert dataset._ids(frame, "payment_id", "payments.csv").tolist() == [1, expected]
    assert _ok_id(frame["payment_id"]).tolist() == [True, expected is not None]  # the gate's value.type
    staged = staged_ids(frame, "payment_id")  # what the gate's SQL checks see
    assert staged.tolist() == [1, expected if expected is not None else pd.NA]


@pytest.mark.parametrize("value", ["-1", "1.5", "x", "", "99999999999999999999"])
def test_a_bad_id_among_plain_ones_is_named_by_line(value):
    with pytest.raises(DropError, match="^payments.csv line 3 column payment_id: expected a whole non-negative"):
        dataset._ids(column("payment_id", ["1", value, "3"]), "payment_id", "payments.csv")
