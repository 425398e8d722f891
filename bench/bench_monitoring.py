"""The model in practice at 20x: what the monitoring adds to an evening, beside the chain's scoring.

    .venv/bin/python bench/bench_monitoring.py [--scale 20] [--evenings 6] [--no-chain]

On the 20x demo after its initial load (SQLite): the 35 clinic days before the first drop get
scores as the evening before would have seen them (every appointment booked before the day and
not canceled by then; random risks: the figures are not the point, the rows are), a model is
trained (gradient boosting), then for each of the first drops, as the chain does each evening:

1. the refresh of day D (not timed),
2. ``update_monitoring(D)``: signatures of the 35-day window, D's row recomputed (timed),
3. ``rolling_figures(D)`` and ``retrain_decision(D)``: the 4 weeks pooled (timed),
4. the chain's scoring step, ``score_day`` of the next clinic day (timed), and its list (not timed).

Then one full evening through the chain (``runner.run_day``, papermill included, model fresh) and
the monitoring of that day, so that both are measured in the same run. Target: the monitoring
step (2 + 3) adds at most 10 % to the chain's time.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import CACHE, loaded_sqlite, table  # noqa: E402


def loop_seconds() -> float:
    t0 = time.perf_counter()
    sum(range(10 ** 7))
    return time.perf_counter() - t0


def synthetic_scores(engine, first: str, last: str) -> int:
    """Scores for the days in [first, last]: what was booked before each day and not canceled by then."""
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM risk_scores WHERE day BETWEEN ? AND ?", (first, last))
        conn.exec_driver_sql(
            "INSERT INTO risk_scores (day, appointment_id, risk, risk_bucket, model_version, scored_at) "
            "SELECT local_date, appointment_id, r, CASE WHEN r < 0.10 THEN 'low' WHEN r < 0.25 THEN 'medium' "
            "ELSE 'high' END, 'synthetic', local_date || 'T00:00:00+00:00' FROM ("
            "  SELECT local_date, appointment_id, (abs(random()) % 10000) / 20000.0 AS r FROM appointments"
            "   WHERE local_date BETWEEN ? AND ? AND booked_at < local_date"
            "     AND (canceled_at IS NULL OR canceled_at >= local_date))", (first, last))
        return conn.exec_driver_sql("SELECT COUNT(*) FROM risk_scores WHERE day BETWEEN ? AND ?",
                                    (first, last)).scalar()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=20)
    parser.add_argument("--evenings", type=int, default=6)
    parser.add_argument("--no-chain", action="store_true", help="skip the full chain run")
    args = parser.parse_args()
    loop = loop_seconds()
    url, data = loaded_sqlite(args.scale, name="monitoring")
    outputs = CACHE / f"monitoring-outputs-{args.scale}x"
    shutil.rmtree(outputs, ignore_errors=True)
    outputs.mkdir(parents=True)
    os.environ.update({"DATABASE_URL": url, "CLINIC_OUTPUTS_DIR": str(outputs), "CLINIC_DATA_DIR": str(data),
                       "CLINIC_TZ": "Europe/Berlin"})
    from clinic_lib.core import db
    from clinic_lib.core.clinic_days import next_clinic_day
    from clinic_lib.modeling.monitoring import (LOOKBACK_DAYS, retrain_decision, rolling_figures, update_monitoring)
    from clinic_lib.modeling.predict import score_day
    from clinic_lib.reception.priorities import build_priorities
    from clinic_lib.ingest.refresh import refresh_day
    from clinic_lib.modeling.train import train

    engine = db.make_engine(url)
    drops = sorted(p.name for p in (data / "daily").iterdir())
    first = dt.date.fromisoformat(drops[0])
    n_scores = synthetic_scores(engine, (first - dt.timedelta(days=LOOKBACK_DAYS)).isoformat(), first.isoformat())
    print(f"{args.scale}x: {n_scores:,} synthetic scores for {first - dt.timedelta(days=LOOKBACK_DAYS)} .. {first}",
          flush=True)
    t0 = time.perf_counter()
    trained = train(as_of=first - dt.timedelta(days=1), model="hgb", engine=engine)
    print(f"trained {trained.model_version} in {time.perf_counter() - t0:.1f} s", flush=True)

    rows, update_s, read_s, score_s = [], [], [], []
    for day in drops[:args.evenings]:
        refresh_day(day, engine=engine, allow_empty=True)
        t0 = time.perf_counter()
        result = update_monitoring(day, engine)
        t1 = time.perf_counter()
        figures = rolling_figures(day, engine)
        decision = retrain_decision(day, engine)
        t2 = time.perf_counter()
        nxt = next_clinic_day(engine, day)
        scored = score_day(nxt, engine=engine)
        t3 = time.perf_counter()
        build_priorities(nxt, engine=engine)
        update_s.append(t1 - t0)
        read_s.append(t2 - t1)
        score_s.append(t3 - t2)
        rows.append([day, len(result.recomputed), f"{figures.n_outcome:,}", f"{(t1 - t0) * 1000:.0f}",
                     f"{(t2 - t1) * 1000:.0f}", f"{nxt}: {len(scored.scores):,}", f"{(t3 - t2) * 1000:.0f}",
                     f"{(t2 - t0) / (t3 - t2):.2f}", "yes" if decision.retrain else "no"])
        print(f"  {day}: update {(t1 - t0) * 1000:.0f} ms, 4 weeks + decision {(t2 - t1) * 1000:.0f} ms, "
              f"score {(t3 - t2) * 1000:.0f} ms", flush=True)
    print()
    print(table(["evening (refreshed day)", "days recomputed", "outcome rows in 4 weeks", "update_monitoring ms",
                 "rolling_figures + retrain_decision ms", "scored (next clinic day: rows)", "score_day ms",
                 "monitoring / scoring", "retrain on evidence?"], rows))
    monitoring = statistics.median(u + r for u, r in zip(update_s, read_s))
    print(f"\nmedians: monitoring step {monitoring * 1000:.0f} ms (update {statistics.median(update_s) * 1000:.0f} + "
          f"4 weeks {statistics.median(read_s) * 1000:.0f}), scoring step {statistics.median(score_s) * 1000:.0f} ms; "
          f"sum(range(10**7)) {loop:.2f} s")

    if not args.no_chain:
        from clinic_lib.pipeline import runner
        day = drops[args.evenings]
        t0 = time.perf_counter()
        result = runner.run_day(day, quiet=True)
        chain = time.perf_counter() - t0
        t0 = time.perf_counter()
        update_monitoring(day, engine)
        rolling_figures(day, engine)
        retrain_decision(day, engine)
        step = time.perf_counter() - t0
        steps = ", ".join(f"{s.name} {s.seconds:.1f}" for s in result.steps)
        print(f"\nthe chain for {day} (model fresh): {chain:.1f} s ({steps}); its monitoring step {step:.2f} s "
              f"= {step / chain:.1%} of the chain (target <= 10 %: {'yes' if step <= 0.10 * chain else 'NO'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
