"""The bad-drop corpus (tests/bad_drops/, see make_corpus.py): every bad drop is caught by the right
check id on the right file and line, the clean drop passes, and validation never changes the data."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from clinic_lib import db, validate
from clinic_lib.refresh import load_raw, refresh_day

CORPUS = Path(__file__).resolve().parent / "bad_drops"
MANIFEST = json.loads((CORPUS / "manifest.json").read_text())
DAY = MANIFEST["day"]


@pytest.fixture
def base_engine(engine, clinic_env):
    load_raw(engine, folder=CORPUS / MANIFEST["base"])
    return engine


def test_manifest_covers_every_drop_check():
    """At least one bad drop per check that runs on drops (the db-only ones are in test_validate_db)."""
    from clinic_lib.checks import DROP, for_scope
    covered = {d["check"] for d in MANIFEST["drops"]}
    assert {c.id for c in for_scope(DROP)} - covered == set()
    assert all((CORPUS / d["folder"]).is_dir() for d in MANIFEST["drops"])


def test_clean_drop_passes_and_refresh_applies_it(base_engine):
    before = db.content_hash(base_engine)
    report = validate.validate_drop(DAY, base_engine, folder=CORPUS / "clean")
    assert report.failed == [], report.summary_text()
    assert report.exit_code == 0
    assert db.content_hash(base_engine) == before
    refresh_day(DAY, base_engine, folder=CORPUS / "clean")  # what passes the gate, the refresh takes


def test_every_bad_drop_is_caught_with_its_row(base_engine):
    before = db.content_hash(base_engine)
    problems = []
    for drop in MANIFEST["drops"]:
        report = validate.validate_drop(DAY, base_engine, folder=CORPUS / drop["folder"], record=False)
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
    from clinic_lib.config import get_settings
    report = validate.validate_drop(DAY, base_engine, folder=CORPUS / "orphan_patient")
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
