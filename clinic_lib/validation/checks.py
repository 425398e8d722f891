"""The catalogue of validation checks: stable ids, severity, where each runs, what it means.

Severity ``error`` blocks (the drop must not be applied; ``clinic validate`` exits 1); ``warning``
is reported and the chain goes on. Scope ``drop`` = checks of ``data/daily/D/`` against what the
database holds; ``db`` = checks of the whole database. The table in ``docs/validation.md`` is
generated from here (``catalogue_markdown()``, written between its marker comments by ``make docs``,
i.e. ``python -m clinic_lib.validation.checks docs/validation.md``), and ``tests/test_docs.py`` compares the
two, so the documentation and the code cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass

ERROR, WARNING = "error", "warning"
DROP, DB = "drop", "db"

# The refresh refuses such a drop with these words and the gate reports it with them.
NO_ROWS_FOR_DAY = ("the drop holds no appointments or payments for {day}, a day on the roster; if the "
                   "clinic was closed that day, say so (--empty-day, or --closed {day} in a catch-up)")


@dataclass(frozen=True)
class CheckDef:
    id: str
    severity: str
    scopes: tuple[str, ...]
    meaning: str


_DEFS = [
    # --- files and structure (drop) ---------------------------------------------------------------
    ("file.missing", ERROR, (DROP,), "a required file (patients, physios, appointments, payments .csv) is not in the drop"),
    ("file.empty", ERROR, (DROP,), "a file has no bytes (or only blanks): not even a header row"),
    ("file.encoding", ERROR, (DROP,), "a file is not UTF-8 (the example names the line and the byte)"),
    ("file.malformed", ERROR, (DROP,), "the CSV cannot be split into fields at a line (stray quote, NUL byte, huge field)"),
    ("columns.missing", ERROR, (DROP,), "a column of the documented format is absent from the header"),
    ("columns.extra", ERROR, (DROP,), "the header has a column the format does not know, or a column twice"),
    ("row.truncated", ERROR, (DROP,), "a row has fewer fields than the header, or the file ends inside a quoted field (cut off mid-way)"),
    ("row.too_many_fields", ERROR, (DROP,), "a row has more fields than the header (an unquoted comma)"),
    ("value.missing", ERROR, (DROP,), "a required value is empty (an id, a name, appt_start/end, booked_at, created_at, amount, paid_at)"),
    ("value.type", ERROR, (DROP,), "a value of the wrong type: an id that is not a whole number >= 0, an amount/price that is not a number, a date that is not YYYY-MM-DD, a roster weekday/time"),
    ("value.choice", ERROR, (DROP, DB), "a payment method or gender outside the allowed values (cash/card/transfer/insurance; F/M/X or empty)"),
    ("timestamp.no_offset", ERROR, (DROP,), "a timestamp without a UTC offset (ambiguous on the night the clocks go back)"),
    ("timestamp.unparsable", ERROR, (DROP,), "a timestamp that is not ISO 8601"),
    ("timestamp.format", ERROR, (DB,), "SQLite only: a stored instant that is not UTC text YYYY-MM-DDTHH:MM:SS+00:00 (written by another tool); comparisons on it are wrong"),
    ("drop.other_day", ERROR, (DROP,), "a row of another day: an appointment whose local date is before D and that was neither booked nor canceled on D, or a payment not paid on D"),
    ("drop.no_rows_for_day", ERROR, (DROP,), NO_ROWS_FOR_DAY.format(day="D")),
    ("status.invalid", ERROR, (DROP, DB), "an appointment status other than booked, completed, canceled, no_show"),
    ("flag.invalid", ERROR, (DROP, DB), "a 0/1 flag (consent_form_received, reminder_consent, is_first_visit, active) with another value"),
    ("id.duplicate_in_drop", ERROR, (DROP,), "the same id twice in one file of the drop (the second row is named; in physio_hours.csv the same physio, weekday and start_time)"),
    ("id.duplicate", ERROR, (DB,), "the same id twice in a table (only possible in a database loaded without primary keys)"),
    ("id.conflict_with_db", ERROR, (DROP,), "an id the database already uses for something else: an appointment id of another patient, a payment id of another appointment"),
    ("orphan.patient", ERROR, (DROP, DB), "an appointment whose patient is in neither the drop nor the database"),
    ("orphan.physio", ERROR, (DROP, DB), "an appointment (or roster row) whose physio is in neither the drop nor the database"),
    ("orphan.appointment", ERROR, (DROP, DB), "a payment whose appointment is unknown, or that would lose its appointment because the drop removes it"),
    ("physio.inactive", ERROR, (DROP, DB), "a booked appointment with a physio who has left (active 0): after D in a drop (the drop's physios.csv says who is active, else the database; D's own appointments, their last day, pass), in the database after the physio's last day (the day their roster ends; today when it never ended there); reminders and the callback list would name them: reassign or cancel it"),
    ("overlap.physio", ERROR, (DROP, DB), "one physio with two non-canceled appointments at the same time"),
    ("overlap.patient", ERROR, (DROP, DB), "one patient in two non-canceled appointments at the same time"),
    ("time.end_before_start", ERROR, (DROP, DB), "appt_end is not after appt_start (roster: end_time not after start_time)"),
    ("time.booked_after_start", ERROR, (DROP, DB), "booked_at is after appt_start"),
    ("time.canceled_at_not_canceled", ERROR, (DROP, DB), "canceled_at is set but the status is not canceled"),
    ("time.canceled_after_start", ERROR, (DROP, DB), "canceled_at is after appt_start (a cancellation after the start is a no_show)"),
    ("time.outcome_in_future", ERROR, (DROP, DB), "status completed or no_show on an appointment that starts after the end of D (drop) or after now (db)"),
    ("price.negative", ERROR, (DROP, DB), "a negative price_estimate"),
    ("roster.outside", WARNING, (DROP, DB), "a non-canceled appointment outside its physio's roster as it holds on the appointment's day (physios without any roster rows are skipped; drop: with the drop's roster and leavers applied; db: appointments from today on)"),
    ("payment.negative", ERROR, (DROP, DB), "a negative payment amount"),
    ("payment.not_completed", ERROR, (DROP, DB), "a payment for an appointment whose status is not completed"),
    ("payment.too_much", WARNING, (DROP, DB), "payments of one appointment add up to more than PAYMENT_MAX_FACTOR (default 3) times its price_estimate"),
    ("payment.before_appointment", ERROR, (DROP, DB), "paid_at is before the appointment's start (a payment booked to the wrong visit)"),
    ("payment.duplicate", ERROR, (DROP, DB), "two payments with the same appointment, amount and paid_at (counted twice)"),
    ("patient.phone_scientific", ERROR, (DROP, DB), "a phone number in scientific notation (4.91762E+11: a spreadsheet stored it as a number): its digits are lost and cannot be recovered; export the column as text"),
    ("patient.phone_invalid", WARNING, (DROP, DB), "a phone number that cannot be dialled: it does not normalise to a possible E.164 number (default region PHONE_REGION, DE); the callback list marks it as no phone"),
    ("patient.email_invalid", WARNING, (DROP, DB), "an email address that is not of the form name@domain.tld"),
]

CATALOGUE: dict[str, CheckDef] = {d[0]: CheckDef(*d) for d in _DEFS}


def for_scope(scope: str) -> list[CheckDef]:
    return [d for d in CATALOGUE.values() if scope in d.scopes]


def catalogue_markdown() -> str:
    """The table of every check, as markdown (for docs/validation.md)."""
    lines = ["| check id | severity | runs on | meaning |", "|---|---|---|---|"]
    for d in CATALOGUE.values():
        meaning = d.meaning.replace("|", "\\|")  # a bar would end the cell
        lines.append(f"| `{d.id}` | {d.severity} | {', '.join(d.scopes)} | {meaning} |")
    return "\n".join(lines)


# The generated table sits between two marker lines of the document (HTML comments: invisible
# when rendered); the start marker's line may carry a note after this prefix.
CATALOGUE_START = "<!-- check-catalogue:start"
CATALOGUE_END = "<!-- check-catalogue:end -->"


def _marker_lines(lines: list[str]) -> tuple[int, int]:
    """The indices of the start and the end marker line; ValueError unless one each, in order."""
    starts = [i for i, line in enumerate(lines) if line.startswith(CATALOGUE_START)]
    ends = [i for i, line in enumerate(lines) if line.strip() == CATALOGUE_END]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise ValueError(f"expected one line starting with {CATALOGUE_START!r} followed by one line "
                         f"{CATALOGUE_END!r}; found {len(starts)} start and {len(ends)} end marker(s)")
    return starts[0], ends[0]


def catalogue_in(text: str) -> str:
    """What stands between the catalogue's marker lines of ``text`` (without the markers)."""
    lines = text.splitlines()
    start, end = _marker_lines(lines)
    return "\n".join(lines[start + 1:end])


def with_catalogue(text: str) -> str:
    """``text`` with whatever stands between the catalogue's marker lines replaced by the table."""
    lines = text.splitlines(keepends=True)
    start, end = _marker_lines(lines)
    return "".join(lines[:start + 1]) + catalogue_markdown() + "\n" + "".join(lines[end:])


def write_catalogue(path) -> bool:
    """Write the table into the document at ``path``; True if the file changed."""
    from pathlib import Path
    path = Path(path)
    old = path.read_text(encoding="utf-8")
    new = with_catalogue(old)
    if new != old:
        path.write_text(new, encoding="utf-8")
    return new != old


if __name__ == "__main__":
    import sys
    target = sys.argv[1] if len(sys.argv) > 1 else "docs/validation.md"
    try:
        changed = write_catalogue(target)
    except (OSError, ValueError) as exc:
        sys.exit(f"python -m clinic_lib.validation.checks: {target}: {exc}")
    print(f"{target}: check catalogue {'updated' if changed else 'already up to date'}")
