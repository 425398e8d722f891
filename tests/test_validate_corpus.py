"""The bad-drop corpus (tests/bad_drops/, see make_corpus.py): every bad drop is caught by the right
check id on the right file and line, the clean drop passes, and validation never changes the data."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from clinic_lib.core import db
from clinic_lib.ingest.refresh import load_raw, refresh_day
from clinic_lib.validation.drop import validate_drop

CORPUS = Path(__file__).resolve().parent / "bad_drops"
MANIFEST = json.loads((CORPUS / "manifest.json").read_text())
DAY = MANIFEST["day"]


@pytest.fixture
def base_engine(engine, clinic_env):
    load_raw(engine, folder=CORPUS / MANIFEST["base"])
    return engine


def test_manifest_covers_every_drop_check():
    """At least one bad drop per check that runs on drops (the db-only ones are in test_validate_db)."""
    from clinic_lib.validation.checks import DROP, for_scope
    covered = {d["check"] for d in MANIFEST["drops"]}
    assert {c.id for c in for_scope(DROP)} - covered == set()
    assert all((CORPUS / d["folder"]).is_dir() for d in MANIFEST["drops"])


def test_clean_drop_passes_and_refresh_applies_it(base_engine):
    before = db.content_hash(base_engine)
    report = validate_drop(DAY, base_engine, folder=CORPUS / "clean")
    assert report.failed == [], report.summary_text()
    assert report.exit_code == 0
    assert db.content_hash(base_engine) == before
    refresh_day(DAY, base_engine, folder=CORPUS / "clean")  # what passes the gate, the refresh takes


def test_every_bad_drop_is_caught_with_its_row(base_engine):
    before = db.content_hash(base_engine)
    problems = []
    for drop in MANIFEST["drops"]:
        report = validate_drop(DAY, base_engine, folder=CORPUS / drop["folder"], record=False)
        check = report.checks[drop["check"]]
        where = {(e.get("file"), e.get("line")) for e in check.examples}
        if check.count == 0:
            problems.append(f"{drop['folder']}: {drop['check']} not raised; got {[c.id for c in report.failed]}")
        elif drop["line"] is not None and (drop["file"], drop["line"]) not in where:
            problems.append(f"{drop['folder']}: {drop['check']} names {sorted(where, key=str)}, "
                            f"expected {drop['file']} line {drop['line']}")
        elif drop["line"] is None and not any(e.get("file") == drop["file"] for e in check.examples):
            problems.append(f"{drop['folder']}: {drop['check']} does not name {drop['file']}")
        if report.exit_code != drop["exit_code"]:
            problems.append(f"{drop['folder']}: exit code {report.exit_code}, expected {drop['exit_code']}")
    assert not problems, "\n".join(problems)
    assert db.content_hash(base_engine) == before


def test_a_bad_drop_is_reported_in_json_and_validation_runs(base_engine, clinic_env):
    from clinic_lib.core.config import get_settings
    report = validate_drop(DAY, base_engine, folder=CORPUS / "orphan_patient")
    path = get_settings().validation_dir / f"validation_{DAY}.json"
    assert report.report_path == path
    data = json.loads(path.read_text())
    assert data["status"] == "errors" and data["exit_code"] == 1
    orphan = next(c for c in data["checks"] if c["id"] == "orphan.patient")
    assert orphan["count"] == 1 and orphan["examples"][0]["value"] == 99
    assert orphan["examples"][0]["appointment_id"] == 202
    with base_engine.connect() as conn:
        row = conn.execute(db.validation_runs.select()).mappings().one()
    assert (row["scope"], str(row["day"]), row["status"], row["n_errors"]) == ("drop", DAY, "errors", 1)
    assert "orphan.patient" in row["summary"] and "line 4" in row["summary"]


# Overlaps between the drop and the database, as they will be after the refresh. Added to the
# corpus base: 150 on D itself (the clean drop no longer lists it, so the refresh deletes it),
# 151 across the midnight that ends the DST day 2026-03-29 (23 h), 152 and 153 booked for 3 April.
BASE_EXTRA = [
    "150,4,2,2026-03-30T09:00:00+02:00,2026-03-30T09:30:00+02:00,2026-03-20T10:00:00+01:00,booked,,45.00,0",
    "151,4,1,2026-03-29T23:30:00+02:00,2026-03-30T00:30:00+02:00,2026-03-20T10:00:00+01:00,completed,,45.00,0",
    "152,4,2,2026-04-03T10:00:00+02:00,2026-04-03T10:45:00+02:00,2026-03-20T10:00:00+01:00,booked,,45.00,0",
    "153,4,2,2026-04-03T11:00:00+02:00,2026-04-03T11:30:00+02:00,2026-03-20T10:00:00+01:00,booked,,45.00,0",
]
DROP_EXTRA = [
    # on D from midnight, physio 1: overlaps 151, which started on the previous local date
    "206,3,1,2026-03-30T00:00:00+02:00,2026-03-30T00:20:00+02:00,2026-03-25T10:00:00+01:00,completed,,45.00,0",
    # booked on D, physio 2, 10:30-11:00 on 3 April: overlaps 152 (10:00-10:45), only touches 153 (11:00)
    "207,1,2,2026-04-03T10:30:00+02:00,2026-04-03T11:00:00+02:00,2026-03-30T12:00:00+02:00,booked,,45.00,0",
    # booked on D, patient 4 with physio 1, 10:40-11:10 on 3 April: patient 4 is with physio 2 at
    # 10:00-10:45 (152) and 11:00-11:30 (153)
    "209,4,1,2026-04-03T10:40:00+02:00,2026-04-03T11:10:00+02:00,2026-03-30T12:10:00+02:00,booked,,45.00,0",
]


def _folder_plus(tmp_path: Path, source: str, name: str, appointments: list[str]) -> Path:
    import shutil
    folder = tmp_path / name
    shutil.copytree(CORPUS / source, folder)
    with open(folder / "appointments.csv", "a") as f:
        f.write("".join(line + "\n" for line in appointments))
    return folder


def _pairs(report, check_id: str) -> set:
    check = report.checks[check_id]
    return {(e["appointment_id"], e["other_appointment_id"], bool(e["other_in_drop"])) for e in check.examples}


def test_drop_overlaps_with_the_database_as_it_will_be_after_the_refresh(engine, clinic_env, tmp_path):
    load_raw(engine, folder=_folder_plus(tmp_path, MANIFEST["base"], "base", BASE_EXTRA))
    report = validate_drop(DAY, engine, folder=_folder_plus(tmp_path, "clean", "drop", DROP_EXTRA),
                                    record=False)
    # not 202 with 150 (the refresh deletes 150), not 207 with 153 (one ends as the other starts)
    assert _pairs(report, "overlap.physio") == {(206, 151, False), (207, 152, False)}
    assert _pairs(report, "overlap.patient") == {(209, 152, False), (209, 153, False)}
    lines = {e["appointment_id"]: e["line"] for e in report.checks["overlap.physio"].examples}
    assert lines == {206: 8, 207: 9}
    # the drop cancels 152 on D: nothing overlaps it any more
    canceled = "152,4,2,2026-04-03T10:00:00+02:00,2026-04-03T10:45:00+02:00,2026-03-20T10:00:00+01:00,canceled,2026-03-30T12:05:00+02:00,45.00,0"
    report = validate_drop(DAY, engine, folder=_folder_plus(tmp_path, "clean", "drop2", DROP_EXTRA + [canceled]),
                                    record=False)
    assert _pairs(report, "overlap.physio") == {(206, 151, False)}
    assert _pairs(report, "overlap.patient") == {(209, 153, False)}
