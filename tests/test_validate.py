"""The validation gate end to end: CLI exit codes, DST days, the notebook under papermill, and fuzzing
(whatever the bytes, a report or a clear UserError, and the database unchanged)."""
from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest

from clinic_lib.cli import main
from clinic_lib.core import db
from clinic_lib.core.errors import UserError
from clinic_lib.ingest.refresh import load_raw
from clinic_lib.validation import read as validation_read
from clinic_lib.validation.checks import DROP
from clinic_lib.validation.drop import validate_drop
from clinic_lib.validation.read import _plain_columns, _read_file
from clinic_lib.validation.report import Report
from clinic_lib.validation.values import _MEMO, KINDS, _passes_in_plain_form

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parent / "bad_drops"
DAY = json.loads((CORPUS / "manifest.json").read_text())["day"]


@pytest.fixture
def loaded(engine, clinic_env):
    load_raw(engine, folder=CORPUS / "base")
    return engine


def _place(clinic_env, folder: str, day: str = DAY) -> Path:
    target = clinic_env / "data" / "daily" / day
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(CORPUS / folder, target)
    return target


def test_cli_exit_codes(loaded, clinic_env, capsys):
    _place(clinic_env, "clean")
    assert main(["validate", "--day", DAY]) == 0
    assert "OK" in capsys.readouterr().out
    _place(clinic_env, "orphan_patient")
    assert main(["validate", "--day", DAY]) == 1
    out = capsys.readouterr().out
    assert "orphan.patient" in out and "appointments.csv line 4" in out
    _place(clinic_env, "roster_outside")  # a warning only: the scheduler goes on
    assert main(["validate", "--day", DAY]) == 0
    assert main(["validate", "--day", "2026-03-31"]) == 2  # no drop folder: could not run
    assert "missing" in capsys.readouterr().err
    assert main(["validate", "--db"]) == 0
    capsys.readouterr()
    assert main(["validate", "--db", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["scope"] == "db"
    with pytest.raises(SystemExit) as exc:
        main(["validate", "--day", "2026-02-30"])
    assert exc.value.code == 2
    with db.make_engine().connect() as conn:
        statuses = [r.status for r in conn.execute(db.validation_runs.select().order_by(db.validation_runs.c.run_id))]
    assert statuses == ["ok", "errors", "warnings", "failed", "ok", "ok"]


@pytest.mark.parametrize("day, start, booked", [
    # the night the clocks go back: 00:30 CEST on D is 22:30 UTC the day before; the second 02:30 is CET
    ("2026-10-25", "2026-10-25T00:30:00+02:00", "2026-10-20T10:00:00+02:00"),
    ("2026-10-25", "2026-10-25T02:30:00+01:00", "2026-10-20T10:00:00+02:00"),
    # the night the clocks go forward: 03:30 CEST is 01:30 UTC
    ("2026-03-29", "2026-03-29T03:30:00+02:00", "2026-03-20T10:00:00+01:00"),
])
def test_dst_days_rows_belong_to_their_local_day(loaded, clinic_env, day, start, booked):
    import datetime as dt
    end = (dt.datetime.fromisoformat(start) + dt.timedelta(minutes=30)).isoformat()
    folder = clinic_env / "drop"
    folder.mkdir()
    header = (CORPUS / "clean" / "appointments.csv").read_text().splitlines()[0]
    (folder / "appointments.csv").write_text(f"{header}\n900,1,1,{start},{end},{booked},completed,,60.00,0\n")
    for table in ("patients", "physios"):
        shutil.copy(CORPUS / "clean" / f"{table}.csv", folder)
    (folder / "payments.csv").write_text((CORPUS / "clean" / "payments.csv").read_text().splitlines()[0] + "\n")
    report = validate_drop(day, loaded, folder=folder, record=False)
    assert report.errors == [], report.summary_text()
    assert report.checks["drop.no_rows_for_day"].count == 0
    assert [c.id for c in report.warnings] == ["roster.outside"]  # a Sunday: no roster block


def test_notebook_accepts_a_clean_drop_and_fails_on_a_bad_one(loaded, clinic_env, db_url):
    if not db_url.startswith("sqlite"):
        pytest.skip("the notebook runs the same code; once on SQLite is enough")
    import papermill as pm
    nb = ROOT / "notebooks" / "validate.ipynb"
    _place(clinic_env, "clean")
    pm.execute_notebook(str(nb), str(clinic_env / "ok.ipynb"), parameters={"day": DAY}, kernel_name="python3",
                        cwd=str(nb.parent), progress_bar=False)
    assert (clinic_env / "outputs" / "validation" / f"validation_{DAY}.json").exists()
    _place(clinic_env, "payment_not_completed")
    before = db.content_hash(loaded)
    with pytest.raises(pm.PapermillExecutionError) as exc:
        pm.execute_notebook(str(nb), str(clinic_env / "bad.ipynb"), parameters={"day": DAY},
                            kernel_name="python3", cwd=str(nb.parent), progress_bar=False)
    assert exc.value.ename == "ValidationFailed" and "payment.not_completed" in exc.value.evalue
    assert db.content_hash(loaded) == before


def test_notebook_is_committed_without_outputs():
    import nbformat
    nb = nbformat.read(ROOT / "notebooks" / "validate.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert "parameters" in code[0].metadata.get("tags", [])


# --- fuzzing -------------------------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
CLEAN = {t: (CORPUS / "clean" / f"{t}.csv").read_bytes() for t in ("patients", "physios", "appointments", "payments")}


@pytest.fixture
def fuzz_db(tmp_path, monkeypatch):
    """One SQLite database for all examples of a fuzz test (validation must leave it as it is)."""
    from clinic_lib.core.migrate import migrate
    monkeypatch.setenv("CLINIC_OUTPUTS_DIR", str(tmp_path / "outputs"))
    engine = db.make_engine(f"sqlite:///{tmp_path / 'fuzz.db'}")
    migrate(engine)
    load_raw(engine, folder=CORPUS / "base")
    return engine, db.content_hash(engine), tmp_path / "drop"


def _run(fuzz_db, files: dict) -> None:
    engine, before, folder = fuzz_db
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for table, data in files.items():
        (folder / f"{table}.csv").write_bytes(data)
    try:
        report = validate_drop(DAY, engine, folder=folder, record=False)
        json.loads(report.to_json())
        report.summary_text()
    except UserError:
        pass
    assert db.content_hash(engine) == before


def _mutate(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for pos, kind, byte in edits:
        if not out:
            out.append(byte)
            continue
        i = pos % len(out)
        if kind == 0:
            del out[i]
        elif kind == 1:
            out.insert(i, byte)
        else:
            out[i] = byte
    return bytes(out)


EDITS = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 2),
                           st.sampled_from(b',"\n\r\x00\xff\xe9-+:.0159aZT \t')), min_size=1, max_size=6)


@FUZZ
@given(table=st.sampled_from(sorted(CLEAN)), edits=EDITS)
def test_fuzz_mutated_csv_gives_a_report(fuzz_db, table, edits):
    _run(fuzz_db, {**CLEAN, table: _mutate(CLEAN[table], edits)})


@FUZZ
@given(table=st.sampled_from(sorted(CLEAN)), data=st.binary(max_size=400))
def test_fuzz_random_bytes_give_a_report(fuzz_db, table, data):
    _run(fuzz_db, {**CLEAN, table: data})


@FUZZ
@given(table=st.sampled_from(sorted(CLEAN)),
       cells=st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30), min_size=1, max_size=12))
def test_fuzz_odd_values_in_a_row(fuzz_db, table, cells):
    lines = CLEAN[table].decode().splitlines()
    import csv
    import io
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(cells)
    _run(fuzz_db, {**CLEAN, table: ("\n".join(lines[:2]) + "\n" + buf.getvalue()).encode()})


@FUZZ
@given(data=st.binary(max_size=300))
def test_fuzz_the_csv_reader(tmp_path_factory, data):
    """dataset.read_csv_text/parse_table (used by the refresh): a frame or a DropError, nothing else."""
    from zoneinfo import ZoneInfo

    from clinic_lib.ingest.drop_format import parse_table, read_csv_text
    path = tmp_path_factory.mktemp("r") / "payments.csv"
    path.write_bytes(CLEAN["payments"][:60] + data)
    try:
        parse_table("payments", read_csv_text(path), ZoneInfo("Europe/Berlin"))
    except UserError:
        pass


def _both_readers(text: str, tmp_path, monkeypatch):
    """physios.csv read as it is, and again with the quick reader turned off (the csv module)."""
    import pandas as pd
    path = tmp_path / "physios.csv"
    path.write_bytes(text.encode())
    quick = _plain_columns(text) is not None
    fast_report, general_report = Report(DROP, dt.date(2026, 3, 30)), Report(DROP, dt.date(2026, 3, 30))
    fast = _read_file(path, "physios", fast_report)
    with monkeypatch.context() as m:
        m.setattr(validation_read, "_plain_columns", lambda text: None)
        general = _read_file(path, "physios", general_report)
    if general is None:
        assert fast is None
    else:
        pd.testing.assert_frame_equal(fast, general)
    assert [c.id for c in fast_report.failed] == [c.id for c in general_report.failed]
    return quick, general_report


@pytest.mark.parametrize("text, plain", [
    ("physio_id,full_name,active\n1,Anna,1\n2,Jonas,0\n", True),
    ("physio_id,full_name,active\r\n1,Anna,1\r\n2,Jonas,0", True),   # Windows line ends, no final line break
    ("physio_id,full_name,active\n1, Anna ,\n,,\n", True),            # spaces and empty fields are values
    ("physio_id,full_name,active\n1,Anna,1\n\n2,Jonas,0\n", False),  # a blank line: skipped, and counted
    ("physio_id,full_name,active\n1,\"Berg, Anna\",1\n", False),      # quoted
    ("physio_id,full_name,active\n1,Anna,1,x\n", False),               # a row longer than the header
    ("physio_id,full_name,active\n1,Anna\n", False),                   # shorter
    ("physio_id,full_name,active\n1,Anna,1\r2,Jonas,0\n", False),     # a lone carriage return
    ("active,physio_id,full_name,extra\n1,1,Anna,x\n", True),         # columns in another order, one extra
    ("physio_id,full_name,active\n", True),                            # no rows
    ("physio_id,full_name\n1,Anna\n", True),                           # a column missing
])
def test_quick_reader_reads_what_the_csv_reader_reads(text, plain, tmp_path, monkeypatch):
    quick, report = _both_readers(text, tmp_path, monkeypatch)
    assert quick == plain


@FUZZ
@given(edits=EDITS)
def test_fuzz_quick_reader_agrees_with_the_csv_reader(tmp_path_factory, edits):
    text = _mutate(CLEAN["physios"], edits).decode("utf-8", errors="replace")
    with pytest.MonkeyPatch.context() as monkeypatch:
        _both_readers(text, tmp_path_factory.mktemp("q"), monkeypatch)


@pytest.mark.parametrize("kind, values, plain", [
    ("pk", ["1", "007", "999999999999999999"], True),    # 18 digits are below 2**63
    ("pk", ["1", "9223372036854775807"], False),         # 19 digits: checked the general way
    ("id", ["1", "12.5"], False),
    ("id", ["1", ""], False),                            # required
    ("id_opt", ["1", ""], True),
    ("ts", ["2026-03-29T01:59:59+01:00", "2026-03-29T03:00:00+02:00", "2026-01-01T00:00:00Z"], True),
    ("ts", ["2026-02-30T09:00:00+01:00"], False),        # Arrow refuses the 30th of February
    ("ts", ["2026-03-30T09:00:00"], False),              # no offset
    ("ts", ["2026-03-30T09:00:00+02:00", ""], False),    # required
    ("ts_opt", ["2026-03-30T09:00:00+02:00", ""], True),
    ("price", ["45.00", "", "999999999999.99"], True),
    ("price", ["1000000000000"], False),                 # 1e12: not an amount
    ("amount", ["0.05", " 1.00"], False),                # a space: the general way strips it
    ("flag", ["0", "1"], False),                         # kinds without a plain form
])
def test_a_column_passes_in_plain_form_only_where_every_check_passes(kind, values, plain):
    import pandas as pd
    column = pd.Series(values, index=range(2, len(values) + 2), dtype=object).astype(str)
    _MEMO.d = {}
    try:
        assert _passes_in_plain_form(kind, column) == plain
        every_check = all(bool(fn(column).all()) for _, fn in KINDS[kind])
        assert every_check or not plain
    finally:
        _MEMO.d = None


def test_plain_values_keep_the_columns_index():
    """Frames of a drop are indexed by CSV line: the converted values stay with their lines."""
    import pandas as pd
    import pyarrow as pa

    from clinic_lib.ingest.drop_format import plain_values
    column = pd.Series(["7", "", "9"], index=[2, 3, 4], dtype=object).astype(str)
    values = plain_values(column, r"^\d+$", False, pa.int64())
    assert list(values.index) == [2, 3, 4] and values[2] == 7 and values[4] == 9 and pd.isna(values[3])
