"""The whole evening in one command: wall time of run_daily's chain, papermill included; and, at
20x in the same run, the per-evening monitoring step against the chain's time.

Targets (absolute, scaled by the reference loop): the full chain for one day at 1x <= 20 s (and
how much of it is kernel start-up); a 30-day backfill at 1x <= 3 min; the full chain at 20x with
training <= 60 s. Ratio: the monitoring step after a refresh (``update_monitoring`` of the day,
then ``retrain_decision``, as ``clinic monitor`` does) at most 10 % of the 20x chain's time with a
fresh model (the usual evening), both measured in this run.
    python bench/bench_chain.py [--scales 1,20]

For the monitoring step the 35 days up to the measured day get scores as the evening before
would have written them (``common.synthetic_scores``, under the model the chain trained) and the
monitoring rows of the days before it; the step then judges the measured day as the evening its
drop arrived, three times (its row removed before each), the median taken.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import CACHE, Results, loaded_sqlite, synthetic_scores, table  # noqa: E402

SUBJECT = "Evening chain"


def use_outputs(folder: Path, url: str, data: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ.update({"DATABASE_URL": url, "CLINIC_OUTPUTS_DIR": str(folder), "CLINIC_DATA_DIR": str(data)})


def kernel_start_seconds(repeat: int = 3) -> float:
    """papermill on a one-cell notebook: what each step pays before its own work."""
    import nbformat

    from clinic_lib.pipeline.runner import execute_notebook
    with tempfile.TemporaryDirectory() as tmp:
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]})]
        path = Path(tmp) / "empty.ipynb"
        nbformat.write(nb, path)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            execute_notebook(path, Path(tmp) / "out.ipynb", {"x": 2}, progress=False)
            times.append(time.perf_counter() - t0)
    return min(times)


def monitoring_step_seconds(url: str, day: str, repeat: int = 3) -> tuple[float, int, int]:
    """The monitoring step of the evening of ``day`` (its drop applied), with 35 days of scores
    before it: (median seconds, scores in the window, days whose row the step computed)."""
    from clinic_lib.core import db
    from clinic_lib.modeling.monitoring import LOOKBACK_DAYS, update_monitoring
    from clinic_lib.modeling.predict import load_model
    from clinic_lib.modeling.retraining import retrain_decision
    engine = db.make_engine(url)
    version = load_model()["model_version"]
    d = dt.date.fromisoformat(day)
    n_scores = synthetic_scores(engine, (d - dt.timedelta(days=LOOKBACK_DAYS)).isoformat(), day, version)
    update_monitoring(d - dt.timedelta(days=1), engine)  # the rows the evenings before wrote
    times, computed = [], 0
    for _ in range(repeat):
        with engine.begin() as conn:
            conn.execute(db.model_monitoring.delete().where(db.model_monitoring.c.day == day))
        t0 = time.perf_counter()
        update = update_monitoring(d, engine)
        retrain_decision(d, engine)
        times.append(time.perf_counter() - t0)
        computed = len(update.recomputed)
    engine.dispose()
    return statistics.median(times), n_scores, computed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scales", default="1,20")
    scales = [int(s) for s in parser.parse_args().scales.split(",")]
    results = Results("chain")
    results.note(SUBJECT, "run_daily's chain for one day as the scheduler runs it (runner.run_day: every step a "
                          "notebook executed by papermill, in a new kernel), on SQLite. 1x: the demo clinic "
                          "(8 physios); 20x: 160 physios. The drops before the measured day are applied first "
                          "(validate + refresh).")
    from clinic_lib.pipeline import runner
    rows = []
    kernel = kernel_start_seconds()
    results.info(SUBJECT, "kernel start-up and papermill overhead per notebook", kernel, "s",
                 detail="a one-cell notebook, the least of 3")
    for scale in scales:
        url, data = loaded_sqlite(scale, name="chain")
        days = sorted(p.name for p in (data / "daily").iterdir())
        out = CACHE / f"chain-outputs-{scale}x"
        use_outputs(out, url, data)
        # the drops before the measured day, then the measured day: the full chain with training
        first, day = days[0], days[-1]
        t0 = time.perf_counter()
        runner.run_range(first, days[-2], steps=("validate", "refresh"), quiet=True)
        catch_up = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = runner.run_day(day, quiet=True)
        with_training = time.perf_counter() - t0
        steps = {s.name: s.seconds for s in result.steps}
        t0 = time.perf_counter()
        runner.run_day(day, quiet=True)  # again: the model is fresh now, so no training
        fresh = time.perf_counter() - t0
        notebooks = sum(1 for s in result.steps if s.notebook and str(s.notebook).endswith(".ipynb"))
        per_step = ", ".join(f"{k} {v:.1f}" for k, v in steps.items())
        rows.append([f"{scale}x", f"chain for {day}, model missing (trains)", f"{with_training:.1f}",
                     f"{notebooks} x {kernel:.1f} = {notebooks * kernel:.1f}", per_step])
        rows.append([f"{scale}x", f"chain for {day}, model fresh (no training)", f"{fresh:.1f}",
                     f"{notebooks - 1} x {kernel:.1f} = {(notebooks - 1) * kernel:.1f}", ""])
        trains = f"full chain for one day, {scale}x, model missing (trains)"
        detail = f"{notebooks} notebooks, kernel start-up {notebooks * kernel:.1f} s of it; per step s: {per_step}"
        if scale in (1, 20):
            results.absolute(SUBJECT, trains, with_training, "s", at_most=20 if scale == 1 else 60, detail=detail)
        else:
            results.info(SUBJECT, trains, with_training, "s", detail=detail)
        results.info(SUBJECT, f"full chain for one day, {scale}x, model fresh (no training)", fresh, "s",
                     detail=f"kernel start-up {(notebooks - 1) * kernel:.1f} s of it")
        if scale == 1:
            span = days[:30] if len(days) >= 30 else days
            url, data = loaded_sqlite(scale, name="backfill")
            use_outputs(CACHE / "backfill-outputs", url, data)
            t0 = time.perf_counter()
            runner.run_range(span[0], span[-1], quiet=True)
            backfill = time.perf_counter() - t0
            rows.append([f"{scale}x", f"backfill of {len(span)} days ({span[0]} .. {span[-1]})",
                         f"{backfill:.1f}", "1 backfill kernel + the last day's chain", ""])
            results.absolute(SUBJECT, f"backfill of {len(span)} days, 1x", backfill, "s", at_most=180,
                             detail="one kernel validates and refreshes the days before the last, then the "
                                    "last day's chain")
        else:
            rows.append([f"{scale}x", f"catch-up of {len(days) - 1} days (validate + refresh, one kernel)",
                         f"{catch_up:.1f}", "", ""])
            results.info(SUBJECT, f"catch-up of {len(days) - 1} days, {scale}x (validate + refresh)", catch_up, "s")
        if scale == 20:
            step, n_scores, computed = monitoring_step_seconds(url, day)
            rows.append([f"{scale}x", f"monitoring step for {day} (update_monitoring + retrain_decision)",
                         f"{step:.2f}", "", f"{step / fresh:.1%} of the chain with a fresh model"])
            results.ratio(SUBJECT, "monitoring step after the refresh, 20x (update_monitoring + retrain_decision)",
                          step, "s", floor=fresh, floor_measure="the 20x chain with a fresh model", at_most=0.10,
                          detail=f"{n_scores:,} scores in the 35 days looked at; {computed} day(s) computed; "
                                 "median of 3")
    print(table(["scale", "what", "wall s", "kernel start-up s (of it)", "per step s"], rows))
    print(f"\nkernel start-up + papermill overhead per notebook: {kernel:.2f} s")
    results.save()


if __name__ == "__main__":
    main()
