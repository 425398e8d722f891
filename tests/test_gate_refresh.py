"""Whatever the refresh refuses, the gate refuses first: every refusal the refresh can raise
(each ``raise DropError``/``RefreshError`` on its path, found in the source of dataset.py and
refresh.py) is made to happen by a drop below, and the gate reports an error for that drop.

The drops are the bad-drop corpus' clean drop (tests/bad_drops, D = 2026-03-30, a Monday on the
roster) with one change each, on the corpus' base database, on SQLite and Postgres.
"""
from __future__ import annotations

import ast
import inspect
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from clinic_lib.core import db
from clinic_lib.core.errors import CannotRun, UserError
from clinic_lib.ingest import drop_format as dataset
from clinic_lib.ingest import refresh
from clinic_lib.ingest.refresh import load_raw, refresh_day
from clinic_lib.validation.checks import ERROR, NO_ROWS_FOR_DAY
from clinic_lib.validation.drop import validate_drop

CORPUS = Path(__file__).resolve().parent / "bad_drops"
DAY, NEXT_DAY = "2026-03-30", "2026-03-31"
# Where the refresh's path raises: all of dataset.py (reading and parsing the files), and in
# refresh.py the references and refresh_day itself (load_raw's own rules are not the refresh's).
REFRESH_FUNCTIONS = {"refresh_day", "_check_references"}


def _lead(node: ast.expr, module) -> str:
    """The fixed start of a refusal's message: the words that say which refusal it is."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.JoinedStr):
        lead = ""
        for part in node.values:
            if not isinstance(part, ast.Constant):
                break
            lead += part.value
        return lead
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
        return getattr(module, node.func.value.id).split("{")[0]  # TEMPLATE.format(...)
    raise AssertionError(f"cannot read the message of {ast.unparse(node)}")


def refusals() -> set[str]:
    found = set()
    for module, functions in ((dataset, None), (refresh, REFRESH_FUNCTIONS)):
        for fn in ast.walk(ast.parse(inspect.getsource(module))):
            if not isinstance(fn, ast.FunctionDef) or (functions is not None and fn.name not in functions):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) \
                        and getattr(node.exc.func, "id", None) in ("DropError", "RefreshError"):
                    args = node.exc.args
                    found.add(_lead(args[1] if node.exc.func.id == "DropError" else args[0], module))
    return found


# --- the drops ------------------------------------------------------------------------------------

def _rows(folder: Path, table: str) -> list[list[str]]:
    return [line.split(",") for line in (folder / f"{table}.csv").read_text().splitlines()]


def _write_rows(folder: Path, table: str, rows: list[list[str]]) -> None:
    (folder / f"{table}.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")


def cell(table: str, line: int, column: str, value: str):
    """Set one value: CSV line ``line`` (header = 1) of ``table``."""
    def change(folder: Path, engine) -> None:
        rows = _rows(folder, table)
        rows[line - 1][rows[0].index(column)] = value
        _write_rows(folder, table, rows)
    return change


def text(table: str, content: bytes | str):
    def change(folder: Path, engine) -> None:
        data = content.encode() if isinstance(content, str) else content
        (folder / f"{table}.csv").write_bytes(data)
    return change


def edit_lines(table: str, fn):
    def change(folder: Path, engine) -> None:
        lines = (folder / f"{table}.csv").read_text().splitlines()
        (folder / f"{table}.csv").write_text("\n".join(fn(lines)) + "\n")
    return change


def roster(*lines: str):
    return text("physio_hours", "physio_id,weekday,start_time,end_time\n" + "".join(f"{l}\n" for l in lines))


def both(*changes):
    def change(folder: Path, engine) -> None:
        for c in changes:
            c(folder, engine)
    return change


def applied_next_day(*rows: str):
    """Before the test: D's clean drop applied, then a drop of D+1 holding ``rows`` (payments)."""
    def change(folder: Path, engine) -> None:
        refresh_day(DAY, engine, folder=folder)
        later = folder.parent / NEXT_DAY
        shutil.copytree(folder, later)
        _write_rows(later, "appointments", _rows(later, "appointments")[:1])
        _write_rows(later, "payments", _rows(later, "payments")[:1] + [r.split(",") for r in rows])
        refresh_day(NEXT_DAY, engine, folder=later)
    return change


@dataclass
class Case:
    refusal: str  # the lead of the refresh's message
    check: str  # the gate's error for the same drop ("could not run": the gate raises CannotRun)
    change: Callable
    name: str


HEADER_A = "appointment_id,patient_id,physio_id,appt_start,appt_end,booked_at,status,canceled_at,price_estimate,is_first_visit"
CASES = [
    Case("folder is missing", "could not run", lambda folder, engine: shutil.rmtree(folder), "no folder"),
    Case("file is missing (looked in ", "file.missing", lambda folder, engine: (folder / "payments.csv").unlink(), "no payments.csv"),
    Case("file is empty: expected at least a header row", "file.empty", text("payments", b""), "0 bytes"),
    Case("file is empty: expected at least a header row", "file.empty", text("payments", b"\xef\xbb\xbf"), "a BOM only"),
    Case("is not UTF-8: byte 0x", "file.encoding", edit_lines("patients", lambda ls: ls), "Latin-1"),  # made below
    Case("malformed CSV: ", "row.too_many_fields", cell("appointments", 3, "price_estimate", "45,00"), "an unquoted comma"),
    Case("row has ", "row.truncated", edit_lines("appointments", lambda ls: ls[:-1] + [ls[-1][:40]]), "cut off"),
    Case("row has ", "row.too_many_fields",
         edit_lines("payments", lambda ls: [ls[0]] + [l + ",x" for l in ls[1:]]), "every row one field more"),
    Case("missing column(s) ", "columns.missing",
         edit_lines("payments", lambda ls: [",".join(l.split(",")[:-1]) for l in ls]), "no method"),
    Case("unexpected column(s) ", "columns.extra",
         edit_lines("payments", lambda ls: [ls[0] + ",note"] + [l + ",x" for l in ls[1:]]), "a note column"),
    Case("expected a whole non-negative number", "value.type", cell("appointments", 2, "patient_id", "-1"), "patient -1"),
    Case("expected a whole non-negative number", "value.type", cell("payments", 2, "payment_id", str(2**63)), "payment id 2**63"),
    Case("a timestamp is required", "value.missing", cell("appointments", 2, "booked_at", ""), "no booked_at"),
    Case("timestamp has no UTC offset; write it as 2026-03-29T09:00:00+02:00", "timestamp.no_offset",
         cell("appointments", 2, "appt_start", "2026-03-30T09:00:00"), "no offset"),
    Case("not an ISO 8601 timestamp", "timestamp.unparsable",
         cell("appointments", 3, "booked_at", "2026-02-30T10:00:00+01:00"), "30 February"),
    Case("expected 0 or 1", "flag.invalid", cell("patients", 2, "consent_form_received", "yes"), "consent yes"),
    Case("expected an amount in euros >= 0, like 65.00", "payment.negative", cell("payments", 2, "amount", "-60.00"), "negative"),
    Case("expected an amount in euros >= 0, like 65.00", "value.type", cell("appointments", 2, "price_estimate", "sixty"), "sixty"),
    Case("expected one of ", "value.choice", cell("payments", 3, "method", "paypal"), "paypal"),
    Case("expected one of ", "status.invalid", cell("appointments", 2, "status", "cancelled"), "cancelled"),
    Case("expected one of ", "value.choice", cell("patients", 2, "gender", "W"), "gender W"),
    Case("duplicate id in this file", "id.duplicate_in_drop", cell("payments", 3, "payment_id", "600"), "payment 600 twice"),
    Case("expected a date YYYY-MM-DD", "value.type", cell("patients", 2, "date_of_birth", "01.05.1980"), "dd.mm.yyyy"),
    Case("a name is required", "value.missing", cell("patients", 2, "last_name", ""), "no last name"),
    Case("expected a weekday 0 (Monday) .. 6 (Sunday)", "value.type", roster("1,7,08:00,12:00"), "weekday 7"),
    Case("expected a local time HH:MM", "value.type", roster("1,0,8:00,12:00"), "8:00"),
    Case("end_time must be after start_time", "time.end_before_start", roster("1,0,12:00,08:00"), "roster backwards"),
    Case("appt_end must be after appt_start", "time.end_before_start",
         cell("appointments", 2, "appt_end", "2026-03-30T08:45:00+02:00"), "ends before it starts"),
    Case("booked_at must not be after appt_start", "time.booked_after_start",
         cell("appointments", 2, "booked_at", "2026-03-30T10:00:00+02:00"), "booked after"),
    Case("canceled_at is only for status canceled", "time.canceled_at_not_canceled",
         cell("appointments", 2, "canceled_at", "2026-03-29T10:00:00+02:00"), "completed with canceled_at"),
    Case("refers to a ", "orphan.patient", cell("appointments", 4, "patient_id", "99"), "patient 99"),
    Case("refers to a ", "orphan.physio", cell("appointments", 4, "physio_id", "9"), "physio 9"),
    Case("refers to a ", "orphan.appointment", cell("payments", 3, "appointment_id", "999"), "appointment 999"),
    Case("refers to a ", "orphan.physio", roster("9,0,08:00,12:00"), "roster of physio 9"),
    Case(NO_ROWS_FOR_DAY.split("{")[0], "drop.no_rows_for_day",
         both(edit_lines("appointments", lambda ls: [ls[0]] + ls[5:]), edit_lines("payments", lambda ls: ls[:1])),
         "nothing of D on a roster day"),
    # what only the database refuses (a constraint or trigger): the refresh says "refresh of D: ..."
    Case("refresh of ", "payment.not_completed",
         both(cell("payments", 3, "appointment_id", "201"), cell("payments", 3, "paid_at", "2026-03-30T10:35:00+02:00")),
         "a payment for the no_show 201"),
    Case("refresh of ", "id.duplicate_in_drop", roster("1,0,08:00,12:00", "1,0,08:00,11:00"), "one roster block twice"),
    Case("refresh of ", "payment.not_completed",
         both(applied_next_day("602,200,10.00,2026-03-31T09:00:00+02:00,card"), cell("appointments", 2, "status", "no_show"),
              edit_lines("payments", lambda ls: ls[:1] + ls[2:])),
         "a paid visit becomes a no_show, its payment is of the next day"),
    Case("refresh of ", "orphan.appointment",
         both(applied_next_day("602,200,10.00,2026-03-31T09:00:00+02:00,card"),
              edit_lines("appointments", lambda ls: ls[:1] + ls[2:]), edit_lines("payments", lambda ls: ls[:1] + ls[2:])),
         "the drop removes a visit paid the next day"),
]


def _latin1(folder: Path, engine) -> None:
    path = folder / "patients.csv"
    path.write_bytes(path.read_text().replace("Huber", "Müller").encode("latin-1"))


CASES[4].change = _latin1


def test_every_refusal_of_the_refresh_has_a_drop_here():
    """A new refusal in the refresh needs its drop here (and so its check in the gate)."""
    assert refusals() == {c.refusal for c in CASES}


@pytest.fixture
def corpus_db(engine, clinic_env):
    load_raw(engine, folder=CORPUS / "base")
    return engine


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_gate_refuses_what_the_refresh_refuses(corpus_db, tmp_path, case):
    folder = tmp_path / DAY
    shutil.copytree(CORPUS / "clean", folder)
    case.change(folder, corpus_db)
    before = db.content_hash(corpus_db)
    with pytest.raises(UserError) as refused:
        refresh_day(DAY, corpus_db, folder=folder)
    assert case.refusal in str(refused.value)  # this drop meets the refusal it stands for
    assert db.content_hash(corpus_db) == before
    if case.check == "could not run":
        with pytest.raises(CannotRun):
            validate_drop(DAY, corpus_db, folder=folder, record=False)
        return
    report = validate_drop(DAY, corpus_db, folder=folder, record=False)
    assert case.check in {c.id for c in report.errors}, report.summary_text()


def test_ids_beyond_floats_are_accepted_by_both_and_stored_exactly(corpus_db, tmp_path):
    """2**53 and 2**53 + 1 are one number as floats: read exactly they are two payments."""
    folder = tmp_path / DAY
    shutil.copytree(CORPUS / "clean", folder)
    cell("payments", 2, "payment_id", str(2**53))(folder, corpus_db)
    cell("payments", 3, "payment_id", f" {2**53 + 1}.0")(folder, corpus_db)
    report = validate_drop(DAY, corpus_db, folder=folder, record=False)
    assert report.exit_code == 0, report.summary_text()
    refresh_day(DAY, corpus_db, folder=folder)
    with corpus_db.connect() as conn:
        ids = {row[0] for row in conn.exec_driver_sql("SELECT payment_id FROM payments")}
    assert {2**53, 2**53 + 1} <= ids


def test_an_empty_drop_of_a_roster_day_is_an_error_with_the_refresh_words(corpus_db, tmp_path):
    folder = tmp_path / DAY
    shutil.copytree(CORPUS / "clean", folder)
    _write_rows(folder, "appointments", [HEADER_A.split(",")])
    _write_rows(folder, "payments", _rows(folder, "payments")[:1])
    with pytest.raises(UserError) as refused:
        refresh_day(DAY, corpus_db, folder=folder)
    report = validate_drop(DAY, corpus_db, folder=folder, record=False)
    check = report.checks["drop.no_rows_for_day"]
    assert check.severity == ERROR and report.exit_code == 1
    words = NO_ROWS_FOR_DAY.format(day=DAY)
    assert str(refused.value) == f"appointments.csv: {words}"
    assert check.examples[0]["problem"] == words and f"problem={words!r}" in report.summary_text()
    # the clinic was closed: both accept it
    assert validate_drop(DAY, corpus_db, folder=folder, record=False, allow_empty=True).exit_code == 0
    refresh_day(DAY, corpus_db, folder=folder, allow_empty=True)
    # Sunday 2026-04-05 is off the roster: an empty drop is what a Sunday looks like, for both
    report = validate_drop("2026-04-05", corpus_db, folder=folder, record=False)
    assert report.checks["drop.no_rows_for_day"].count == 0
    refresh_day("2026-04-05", corpus_db, folder=folder)
