"""The model in practice at 20x: what the monitoring adds to an evening, beside the chain's scoring.

    .venv/bin/python bench/bench_monitoring.py [--scale 20] [--evenings 6]

On the 20x demo after its initial load (SQLite): the 35 clinic days before the first drop get
scores as the evening before would have seen them (every appointment booked before the day and
not canceled by then; random risks: the figures are not the point, the rows are), a model is
trained (gradient boosting), then for each of the first drops, as the chain does each evening:

1. the refresh of day D (not timed),
2. ``update_monitoring(D)``: signatures of the 35-day window, D's row recomputed (timed),
3. ``rolling_figures(D)`` and ``retrain_decision(D)``: the 4 weeks pooled (timed),
4. the chain's scoring step, ``score_day`` of the next clinic day (timed), and its list (not timed).

The figures are for reference, beside the scoring step of the same evenings; the target on the
monitoring step (at most 10 % of the chain's time at 20x) is measured by bench_chain.py, against
the chain in the same run.
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
from common import CACHE, Results, loaded_sqlite, synthetic_scores, table  # noqa: E402

SUBJECT = "Model monitoring"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=20)
    parser.add_argument("--evenings", type=int, default=6)
    args = parser.parse_args()
    results = Results("monitoring")
    url, data = loaded_sqlite(args.scale, name="monitoring")
    outputs = CACHE / f"monitoring-outputs-{args.scale}x"
    shutil.rmtree(outputs, ignore_errors=True)
    outputs.mkdir(parents=True)
    os.environ.update({"DATABASE_URL": url, "CLINIC_OUTPUTS_DIR": str(outputs), "CLINIC_DATA_DIR": str(data),
                       "CLINIC_TZ": "Europe/Berlin"})
    from clinic_lib.core import db
    from clinic_lib.core.clinic_days import next_clinic_day
    from clinic_lib.ingest.refresh import refresh_day
    from clinic_lib.modeling.monitoring import LOOKBACK_DAYS, rolling_figures, update_monitoring
    from clinic_lib.modeling.predict import score_day
    from clinic_lib.modeling.retraining import retrain_decision
    from clinic_lib.modeling.train import train
    from clinic_lib.reception.priorities import build_priorities

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
    scoring = statistics.median(score_s)
    print(f"\nmedians: monitoring step {monitoring * 1000:.0f} ms (update {statistics.median(update_s) * 1000:.0f} + "
          f"4 weeks {statistics.median(read_s) * 1000:.0f}), scoring step {scoring * 1000:.0f} ms")
    results.note(SUBJECT, f"SQLite, the {args.scale}x demo; the {LOOKBACK_DAYS} days before the first drop scored "
                          f"({n_scores:,} synthetic scores), a model trained; then {len(rows)} evenings as the chain "
                          "runs them: refresh, the monitoring step, scoring the next clinic day. Medians over the "
                          "evenings. The target on the monitoring step is in the evening chain's table.")
    results.info(SUBJECT, f"update_monitoring after a refresh, {args.scale}x", statistics.median(update_s) * 1000, "ms",
                 detail=f"days recomputed per evening: {', '.join(str(r[1]) for r in rows)}")
    results.info(SUBJECT, f"rolling_figures + retrain_decision (4 weeks pooled), {args.scale}x",
                 statistics.median(read_s) * 1000, "ms", detail=f"outcome rows in 4 weeks: {rows[-1][2]}")
    results.info(SUBJECT, f"the monitoring step beside the scoring step of the same evening, {args.scale}x",
                 monitoring * 1000, "ms", detail=f"score_day of the next clinic day: {scoring * 1000:.0f} ms "
                                                 f"({monitoring / scoring:.2f}x)")
    results.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
