"""bench/common.py's Results (the figures of a bench as JSON) and bench/report.py (docs/benchmarks.md
from one run): targets scaled by hand-computed factors, one run per document."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import report  # noqa: E402

import common  # noqa: E402


def results(tmp_path, name="refresh", loop=0.30, run_id="run-1"):
    return common.Results(name, loop_seconds=loop, run_id=run_id, folder=tmp_path, quiet=True)


def test_absolute_targets_scale_with_a_slower_reference_loop(tmp_path):
    r = results(tmp_path, loop=0.30)  # twice as slow as the reference machine (0.15 s)
    assert r.loop_factor == pytest.approx(2.0)
    time_row = r.absolute("Refresh", "refresh_day at 1x", 0.35, "s", at_most=0.2)
    assert time_row["scaled_target"] == pytest.approx(0.4)  # a time may take twice as long
    assert time_row["met"] == "yes" and time_row["kind"] == "absolute"
    rate_row = r.absolute("API", "requests per second", 450.0, "req/s", at_least=1000)
    assert rate_row["scaled_target"] == pytest.approx(500.0)  # a rate needs only half
    assert rate_row["met"] == "no"
    fixed = r.absolute("Model", "peak memory", 2.5, "GB", at_most=2)
    assert fixed["kind"] == "fixed" and fixed["scaled_target"] == 2 and fixed["met"] == "no"
    assert fixed["target_kind"] == "absolute, not a speed: not scaled"


def test_a_faster_machine_keeps_the_bound_as_written(tmp_path):
    r = results(tmp_path, loop=0.10)
    row = r.absolute("Refresh", "refresh_day at 1x", 0.21, "s", at_most=0.2)
    assert r.loop_factor == 1.0
    assert row["scaled_target"] == pytest.approx(0.2) and row["met"] == "no"


def test_ratio_targets_are_the_factor_times_the_floor_of_the_same_run(tmp_path):
    r = results(tmp_path, loop=0.60)  # the loop does not touch a ratio
    row = r.ratio("Load", "initial load, 20x clinic", 6.3, "s", floor=2.0,
                  floor_measure="SQLite alone copying the same rows", at_most=3)
    assert row["scaled_target"] == pytest.approx(6.0)
    assert row["ratio"] == pytest.approx(3.15)
    assert row["met"] == "no"
    assert row["target"] == "<= 3x SQLite alone copying the same rows"
    assert row["target_kind"] == "ratio to floor 'SQLite alone copying the same rows' measured in the same run"
    share = r.ratio("Chain", "monitoring step", 0.9, "s", floor=10.0, floor_measure="the chain", at_most=0.1)
    assert share["target"] == "<= 10 % of the chain" and share["scaled_target"] == pytest.approx(1.0)
    assert share["met"] == "yes"
    ahead = r.ratio("Model", "mean ROC AUC", 0.74, "", floor=0.74, floor_measure="the best baseline", above=1)
    assert ahead["met"] == "no"  # level with the floor is not ahead of it
    with pytest.raises(TypeError):
        r.ratio("Model", "x", 1.0, "s", floor=1.0, floor_measure="y", at_most=2, at_least=1)


def test_the_json_holds_the_machine_once_the_run_id_and_every_row_as_it_comes(tmp_path):
    r = results(tmp_path, name="chain", run_id="run-7")
    r.note("Evening chain", "1x demo")
    r.info("Evening chain", "kernel start-up", 0.5, "s")
    data = json.loads((tmp_path / "chain.json").read_text())
    assert data["run_id"] == "run-7" and data["complete"] is False  # written before save()
    assert data["machine"]["loop_seconds"] == 0.30 and data["machine"]["cores"] >= 1
    assert {"cpu_model", "python"} <= set(data["machine"])
    assert data["rows"][0]["measure"] == "kernel start-up" and data["rows"][0]["met"] is None
    r.save()
    data = json.loads((tmp_path / "chain.json").read_text())
    assert data["complete"] is True and data["finished_at"]
    row = data["rows"][0]
    assert set(row) >= {"subject", "measure", "figure", "unit", "target", "target_kind", "scaled_target", "met"}


def test_the_run_id_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CLINIC_BENCH_RUN_ID", "from-make")
    r = common.Results("demo", loop_seconds=0.1, folder=tmp_path, quiet=True)
    assert r.run_id == "from-make"


def test_report_describes_the_machine_once_and_a_table_per_subject(tmp_path):
    a = results(tmp_path, name="refresh", loop=0.30)
    a.note("Initial load and daily refresh", "the 20x clinic: 816,005 appointments")
    a.ratio("Initial load and daily refresh", "initial load, 20x clinic", 6.3, "s", floor=2.0,
            floor_measure="SQLite alone copying the same rows", at_most=3)
    a.absolute("Initial load and daily refresh", "refresh_day at 1x", 0.35, "s", at_most=0.2)
    a.save()
    b = results(tmp_path, name="demo", loop=0.20)
    b.absolute("Demo generator", "clinic demo --scale 20", 12.0, "s", at_most=60)
    b.ratio("Demo generator", "ROC AUC of the planted risk", 0.74121, "", floor=0.74089,
            floor_measure="the baseline's", above=1, digits=4)
    b.save()
    out = tmp_path / "benchmarks.md"
    assert report.main(["--input", str(tmp_path), "--output", str(out)]) == 0
    text = out.read_text()
    assert text.count("## The machine") == 1
    assert "Reference loop `sum(range(10**7))`: 0.200-0.300 s" in text
    assert "4 targets, 3 met, 1 not met" in text
    lines = text.splitlines()
    load = next(line for line in lines if line.startswith("| initial load, 20x clinic"))
    assert load == ("| initial load, 20x clinic | 6.30 s (3.15x) | <= 3x SQLite alone copying the same rows (2.00 s) "
                    "| ratio | <= 6.00 s | **no** |  |")
    refresh = next(line for line in lines if line.startswith("| refresh_day at 1x"))
    assert refresh == "| refresh_day at 1x | 0.350 s | <= 0.2 s | absolute, scaled | <= 0.400 s | yes |  |"
    demo = next(line for line in lines if line.startswith("| clinic demo --scale 20"))
    assert "<= 60 s" in demo and "<= 80.0 s" in demo  # 60 s x 0.20 / 0.15
    auc = next(line for line in lines if line.startswith("| ROC AUC of the planted risk"))
    assert auc == "| ROC AUC of the planted risk | 0.7412 (1.00x) | > the baseline's (0.7409) | ratio | > 0.7409 | yes |  |"
    # the demo's subject comes before the refresh's (the order of the pipeline), once each
    assert text.index("## Demo generator") < text.index("## Initial load and daily refresh")
    assert text.count("## Initial load and daily refresh") == 1
    assert "the 20x clinic: 816,005 appointments" in text
    assert "`bench/bench_api.py` wrote no figures" in text


def test_report_refuses_to_mix_runs(tmp_path, capsys):
    old = results(tmp_path, name="refresh", run_id="run-old")
    old.info("Initial load and daily refresh", "refresh_day at 1x", 0.03, "s")
    old.save()
    new = results(tmp_path, name="demo", run_id="run-new")
    new.info("Demo generator", "clinic demo --scale 1", 2.0, "s")
    new.save()
    out = tmp_path / "benchmarks.md"
    assert report.main(["--input", str(tmp_path), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "2 runs" in err and "run-old: refresh.json" in err and "run-new: demo.json" in err
    assert not out.exists()
    assert report.main(["--input", str(tmp_path), "--output", str(out), "--run-id", "run-new"]) == 0
    text = out.read_text()
    assert "clinic demo --scale 1" in text and "refresh_day at 1x" not in text


def test_report_says_when_other_work_loaded_the_machine(tmp_path):
    r = results(tmp_path, name="chain")
    r.info("Evening chain", "kernel start-up", 0.5, "s")
    r.save()
    cores = r.data["machine"]["cores"]
    out = tmp_path / "benchmarks.md"
    r.data["load_average"] = {"start": cores * 0.5, "end": cores * 0.25}
    r._write()
    assert report.main(["--input", str(tmp_path), "--output", str(out)]) == 0
    assert "Other work shared the machine" not in out.read_text()
    r.data["load_average"] = {"start": cores * 0.5, "end": cores * 3.0}
    r._write()
    assert report.main(["--input", str(tmp_path), "--output", str(out)]) == 0
    assert f"the load average reached {common.number(cores * 3.0)} on {cores} cores" in out.read_text()


def test_report_says_when_a_bench_stopped_half_way(tmp_path):
    r = results(tmp_path, name="chain")
    r.absolute("Evening chain", "full chain, 1x", 12.0, "s", at_most=20)  # no save(): the bench failed after it
    out = tmp_path / "benchmarks.md"
    assert report.main(["--input", str(tmp_path), "--output", str(out)]) == 0
    assert "It stopped before it finished" in out.read_text()


def test_report_without_figures_is_an_error(tmp_path, capsys):
    assert report.main(["--input", str(tmp_path), "--output", str(tmp_path / "b.md")]) == 2
    assert "no figures" in capsys.readouterr().err
