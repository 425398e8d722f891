"""Benchmark of the cancellation-risk model: rolling-origin tables with both baselines, the shipped
model's holdout figures, and training / scoring speed at 20x. Prints markdown tables.

    .venv/bin/python bench/bench_model.py              # real file + demo 1x + demo 20x
    .venv/bin/python bench/bench_model.py --no-20x     # skip the ~800k-appointment runs
    .venv/bin/python bench/bench_model.py --settings   # also the gradient-boosting settings grid

1. The public no-show file (../shared/data/real/, CC BY-NC-SA 4.0), imported with
   CLINIC_TZ=America/Sao_Paulo. Rolling origins 2016-05-16, -19, -22, -25, -28: each fits on the
   days before it and scores the next 7 days as the chain would; the candidates and both baselines
   in one table, per origin and as means, for all appointments and for those booked before the
   evening. Target: the model the rule ships is ahead of both baselines on mean ROC AUC. Then
   ``train(as_of=2016-06-08)``: its holdout figures, distinct risks, calibration's cost.
2. The demo clinic at 1x: the same table on eight weekly origins before TODAY, and ``train``.
3. The demo at 20x: training (evaluation, choice, calibration and refit) in a subprocess, timed
   against its floor in the same run: another subprocess reading the same training table and
   fitting the four-feature baseline once on the rows the deployed model learns from (imports
   included in both). Training fits three candidates and two baselines at each of four holdout
   weeks, then refits the chosen one: at most TRAIN_FLOOR_RATIO x the floor; <= 2 GB peak RSS, model file <= 20 MB (fixed).
   Scoring the busiest day: <= 3x the time of reading that day's rows and its patients' history.
Everything runs in a temporary folder; nothing in the project's data/ or outputs/ is touched.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from common import Results  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "real" / "KaggleV2-May-2016.csv.zip"
REAL_ORIGINS = ["2016-05-16", "2016-05-19", "2016-05-22", "2016-05-25", "2016-05-28"]
REAL_LAST_DAY = "2016-06-08"
HORIZON_DAYS = 7
TODAY = dt.date(2026, 3, 20)
DEMO_ORIGINS = [(TODAY - dt.timedelta(days=7 * w)).isoformat() for w in range(8, 0, -1)]
# Training reads the table once like the floor, then fits five models at each of four holdout weeks
# and refits the chosen one, where the floor fits one small model once.
TRAIN_FLOOR_RATIO = 5
QUALITY, SPEED = "Risk model: quality", "Risk model: training and scoring"
SETTINGS_GRID = {
    "shipped": None,
    "default-ish (31 leaves, 40/leaf, L2 1)": {"learning_rate": 0.1, "max_iter": 100, "max_leaf_nodes": 31,
                                               "min_samples_leaf": 40, "l2_regularization": 1.0},
    "slow (0.05 x 300, 100/leaf)": {"learning_rate": 0.05, "max_iter": 300, "max_leaf_nodes": 31,
                                    "min_samples_leaf": 100, "l2_regularization": 1.0},
    "slow small trees (0.05 x 200, 15 leaves, 200/leaf, L2 5)": {
        "learning_rate": 0.05, "max_iter": 200, "max_leaf_nodes": 15, "min_samples_leaf": 200,
        "l2_regularization": 5.0},
}
RESULTS: Results | None = None  # set by main()


def _env(tmp: Path, tz: str, db_url: str, outputs: str = "outputs"):
    os.environ.update({"CLINIC_TZ": tz, "CLINIC_DATA_DIR": str(tmp / "data"),
                       "CLINIC_OUTPUTS_DIR": str(tmp / outputs), "DATABASE_URL": db_url})


def _f(v, digits=3):
    return "n/a" if v is None else f"{v:.{digits}f}"


# --- rolling origin ----------------------------------------------------------------------------------

def rolling_report(name: str, engine, last_day: str, origins: list[str], k: int):
    """The rolling-origin table of the candidates and both baselines; the rule's choice."""
    from clinic_lib.modeling import evaluate as E
    from clinic_lib.modeling import models as M
    from clinic_lib.modeling.train import training_table
    t = time.perf_counter()
    table = training_table(engine, dt.date.fromisoformat(last_day))
    ro = E.rolling_origin(table, origins, HORIZON_DAYS, list(M.CANDIDATES) + list(M.BASELINES), last_day=last_day)
    print(f"  {name}: rolling origin on {len(table)} finished appointments in {time.perf_counter() - t:.0f} s",
          flush=True)
    shipped, reason = E.choose(ro, M.CANDIDATES)
    models = ro.models
    for population, label in (("all", "all appointments"), ("booked_before_evening", "booked before the evening")):
        per, means = ro.per_origin(population), ro.mean_auc(population)
        print(f"\n{name}, ROC AUC per origin ({label}; each origin scores its next {HORIZON_DAYS} days):\n")
        print("| origin | scored days | n | base rate | " + " | ".join(models) + " |")
        print("|---|---|---:|---:|" + "---:|" * len(models))
        for r in per.to_dict("records"):
            print(f"| {r['origin']} | {r['days']} | {r['n']} | {_f(r['base_rate'])} | "
                  + " | ".join(_f(r[m], 4) for m in models) + " |")
        print("| **mean** | | | | " + " | ".join(f"**{_f(means[m], 4)}**" for m in models) + " |\n", flush=True)
    print(f"{name}: {reason}", flush=True)
    means = ro.mean_auc("all")
    best = max(M.BASELINES, key=lambda b: means[b])
    RESULTS.ratio(QUALITY, f"{name}: mean rolling-origin ROC AUC of the shipped model ({shipped})",
                  round(means[shipped], 4), "", floor=round(means[best], 4),
                  floor_measure="the better baseline's", above=1,
                  target="ahead of both baselines: > the better one's",
                  detail=f"four-feature {means['four_feature']:.4f}, lead time {means['lead_time']:.4f}; "
                         f"{len(origins)} origins", digits=4)
    before = ro.mean_auc("booked_before_evening")
    RESULTS.info(QUALITY, f"{name}: the same, appointments booked before the evening", round(before[shipped], 4),
                 detail=f"four-feature {before['four_feature']:.4f}, lead time {before['lead_time']:.4f}", digits=4)
    print(f"\n{name}, mean over origins per population (AUC / average precision / precision@{k}):\n")
    print("| model | booked before the evening | same-day bookings |\n|---|---|---|")
    for m in [shipped] + [b for b in M.BASELINES if b != shipped]:
        cells = []
        for population in ("booked_before_evening", "same_day"):
            f = ro.mean_figures(m, population, k)
            cells.append(f"{_f(f['roc_auc'])} / {_f(f['average_precision'])} / {_f(f['precision_at_k'])}")
        print(f"| {m} | {cells[0]} | {cells[1]} |")
    print(flush=True)
    return table, ro


def settings_report(name: str, table, last_day: str, origins: list[str]):
    """Mean rolling-origin ROC AUC of the gradient boosting and the blend for each setting."""
    from clinic_lib.modeling import evaluate as E
    print(f"\n{name}, gradient-boosting settings (mean rolling-origin ROC AUC, all / booked before):\n")
    print("| settings | hgb | blend |\n|---|---|---|")
    for label, settings in SETTINGS_GRID.items():
        ro = E.rolling_origin(table, origins, HORIZON_DAYS, ["blend"], last_day=last_day, hgb_settings=settings)
        a, b = ro.mean_auc("all"), ro.mean_auc("booked_before_evening")
        print(f"| {label} | {a['hgb']:.4f} / {b['hgb']:.4f} | {a['blend']:.4f} / {b['blend']:.4f} |", flush=True)


def train_report(name: str, engine, as_of: str):
    """train(as_of): what ships, its holdout figures, the refit's range, calibration and ties."""
    from clinic_lib.modeling import evaluate as E
    from clinic_lib.modeling.train import train
    r = train(as_of=as_of, valid_days=28, engine=engine)
    h, d, c = r.metrics["holdout"], r.metrics["deployed"], r.metrics["calibration"]
    before, same = h["booked_before_evening"], h["same_day"]
    RESULTS.info(QUALITY, f"{name}: train(as_of={as_of}) ships {r.kind}; holdout ROC AUC, booked before the "
                          "evening", round(before["roc_auc"], 3) if before["roc_auc"] is not None else "n/a",
                 detail=f"holdout {h['start']}..{h['end']}, n={before['n']}, AP {_f(before['average_precision'])}, "
                        f"precision@{before['k']} {_f(before['precision_at_k'])}, base rate {_f(before['base_rate'])}")
    RESULTS.info(QUALITY, f"{name}: holdout ROC AUC, same-day bookings",
                 round(same["roc_auc"], 3) if same["roc_auc"] is not None else "n/a",
                 detail=f"n={same['n']}, AP {_f(same['average_precision'])}, precision@{same['k']} "
                        f"{_f(same['precision_at_k'])}")
    RESULTS.check(QUALITY, f"{name}: the deployed model learns up to as_of", f"{d['train_start']}..{d['train_end']}",
                  f"ends at {as_of}", d["train_end"] == as_of, detail=f"{d['rows']} rows")
    cost = (c["roc_auc_raw"] or 0) - (h["all"]["roc_auc"] or 0)
    RESULTS.absolute(QUALITY, f"{name}: holdout ROC AUC lost to calibration ({c['method']})", round(cost, 4), "",
                     at_most=E.MAX_CALIBRATION_AUC_COST, digits=4,
                     detail=f"raw {_f(c['roc_auc_raw'], 4)} -> shipped {_f(h['all']['roc_auc'], 4)}")
    risk = r.holdout["risk"].to_numpy()
    same_day = (r.holdout["same_day_booking"] == 1).to_numpy()
    RESULTS.check(QUALITY, f"{name}: holdout risks: distinct (all / same-day), min, max",
                  f"{h['all']['distinct_risks']} of {h['all']['n']} / {same['distinct_risks']} of {same['n']}, "
                  f"{risk.min():.4f}, {risk.max():.4f}", "inside (0, 1), no collapse",
                  0 < risk.min() and risk.max() < 1 and (same_day.sum() < 2 or same["distinct_risks"] > 1))
    RESULTS.info(QUALITY, f"{name}: holdout calibration error (all; booked before the evening)",
                 f"{_f(h['all']['calibration_error'])}; {_f(before['calibration_error'])}")
    return r


# --- the datasets -------------------------------------------------------------------------------------

def bench_real(tmp: Path, k: int, settings: bool):
    from clinic_lib.core import db
    from clinic_lib.ingest.noshow import import_noshow
    print("real file:", REAL, flush=True)
    url = f"sqlite:///{tmp / 'real.db'}"
    _env(tmp, "America/Sao_Paulo", url)
    t = time.perf_counter()
    summary = import_noshow(REAL, database_url=url)
    RESULTS.info(SPEED, "real: importing the public file (110,527 rows)", time.perf_counter() - t, "s",
                 detail=f"{summary['appointments']} appointments, {summary['dropped_appointment_before_booking']} "
                        "dropped (appointment before booking)")
    engine = db.make_engine(url)
    table, _ = rolling_report("real", engine, REAL_LAST_DAY, REAL_ORIGINS, k)
    if settings:
        settings_report("real", table, REAL_LAST_DAY, REAL_ORIGINS)
    train_report("real", engine, REAL_LAST_DAY)


def _demo_db(tmp: Path, scale: int) -> str:
    from clinic_lib.core import db
    from clinic_lib.core.migrate import migrate
    from clinic_lib.ingest.demo import generate_demo
    from clinic_lib.ingest.refresh import load_raw
    url = f"sqlite:///{tmp / f'demo{scale}.db'}"
    _env(tmp, "Europe/Berlin", url)
    t = time.perf_counter()
    generate_demo(tmp / f"demo{scale}", seed=42, today=TODAY, physios=8 * scale, patients=3200 * scale,
                  drop_days=0, raw_as_of=TODAY - dt.timedelta(days=1))  # TODAY's appointments still booked
    engine = db.make_engine(url)
    migrate(engine)
    n = load_raw(engine, folder=tmp / f"demo{scale}" / "raw")
    engine.dispose()
    print(f"  demo {scale}x: generated and loaded {n} rows in {time.perf_counter() - t:.0f} s", flush=True)
    return url


def scoring_report(name: str, engine, target: bool, repeat: int = 5):
    """Scoring TODAY against reading its rows and its patients' history, interleaved, medians
    (``target``: the 3x bound applies; a small day's scoring is mostly fixed costs)."""
    from clinic_lib.core.config import get_settings
    from clinic_lib.modeling.predict import load_model, read_day, score_day
    settings = get_settings()
    load_model()
    score_day(TODAY, engine=engine)  # warm: the model is loaded once per process
    reads, scores = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        with engine.connect() as conn:
            day = read_day(conn, TODAY, settings)
        reads.append(time.perf_counter() - t)
        t = time.perf_counter()
        s = score_day(TODAY, engine=engine)
        scores.append(time.perf_counter() - t)
    read, score = sorted(reads)[repeat // 2], sorted(scores)[repeat // 2]
    measure = f"{name}: scoring a day (score_day)"
    detail = f"{len(s.scores)} appointments, {len(day.history)} history rows; median of {repeat}"
    if target:
        RESULTS.ratio(SPEED, measure, score, "s", floor=read, floor_measure="reading its rows and history",
                      at_most=3, detail=detail)
    else:
        RESULTS.info(SPEED, measure + " (mostly fixed costs at this size)", score, "s",
                     detail=f"{detail}; reading them {read:.3f} s ({score / read:.1f}x)")


def bench_demo1(tmp: Path, k: int, settings: bool):
    from clinic_lib.core import db
    url = _demo_db(tmp, 1)
    engine = db.make_engine(url)
    last_day = (TODAY - dt.timedelta(days=1)).isoformat()
    table, _ = rolling_report("demo 1x", engine, last_day, DEMO_ORIGINS, k)
    if settings:
        settings_report("demo 1x", table, last_day, DEMO_ORIGINS)
    train_report("demo 1x", engine, last_day)
    scoring_report("demo 1x", engine, target=False)


CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, {code!r})
t = time.perf_counter()
from clinic_lib.modeling.train import train
r = train(as_of={as_of!r}, valid_days=28, model="auto")
out = {{"seconds": time.perf_counter() - t, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "kind": r.kind, "model_path": str(r.model_path)}}
if "deployed" in r.metrics:
    out.update(deployed=r.metrics["deployed"], means=r.metrics["choice"]["mean_roc_auc"],
               before=r.metrics["holdout"]["booked_before_evening"], calibration=r.metrics["calibration"]["method"])
print(json.dumps(out, default=str))
"""


FLOOR_CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, {code!r})
t = time.perf_counter()
import datetime as dt
from threadpoolctl import threadpool_limits
from clinic_lib.core import db
from clinic_lib.modeling import evaluate as E
from clinic_lib.modeling import features as F
from clinic_lib.modeling import models as M
from clinic_lib.modeling.train import training_table
as_of = dt.date.fromisoformat({as_of!r})
with threadpool_limits(limits=M.TRAIN_THREADS, user_api="openmp"):
    table = training_table(db.make_engine(), as_of)
    rows = E.rows_before(table, (as_of + dt.timedelta(days=1)).isoformat())
    M.fit_kind("four_feature", rows[F.FEATURES], rows["target"].to_numpy())
print(json.dumps({{"seconds": time.perf_counter() - t, "rows": len(rows), "table": len(table),
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


def _child(script: str, url: str, outputs: Path, as_of: str) -> dict:
    env = dict(os.environ, DATABASE_URL=url, CLINIC_OUTPUTS_DIR=str(outputs))
    out = subprocess.run([sys.executable, "-c", script.format(code=str(ROOT), as_of=as_of)],
                         capture_output=True, text=True, env=env)
    if out.returncode:
        print(out.stderr, flush=True)
        raise SystemExit("a 20x training child failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_demo20(tmp: Path):
    import sqlalchemy as sa

    from clinic_lib.core import db
    url = _demo_db(tmp, 20)
    with db.make_engine(url).connect() as conn:
        n = conn.execute(sa.select(sa.func.count()).select_from(db.appointments)).scalar()
    as_of = (TODAY - dt.timedelta(days=1)).isoformat()
    outputs = Path(os.environ["CLINIC_OUTPUTS_DIR"])
    print(f"  load average before the floor: {os.getloadavg()[0]:.1f}", flush=True)
    floor = _child(FLOOR_CHILD, url, outputs, as_of)
    print(f"  load average before the training: {os.getloadavg()[0]:.1f}", flush=True)
    res = _child(CHILD, url, outputs, as_of)
    d = res["deployed"]
    RESULTS.note(SPEED, f"20x: the demo clinic at 20x ({n:,} appointments, SQLite), as_of {as_of}; training and its "
                        "floor each in a new process, imports included. The floor: reading the same training table "
                        f"({floor['table']:,} finished appointments) and fitting the four-feature baseline once on the "
                        f"{floor['rows']:,} rows the deployed model learns from.")
    RESULTS.ratio(SPEED, "20x: training (evaluation, choice, calibration, refit)", res["seconds"], "s",
                  floor=floor["seconds"], floor_measure="reading the table + one four-feature fit",
                  at_most=TRAIN_FLOOR_RATIO,
                  detail=f"ships {res['kind']}, deployed on {d['train_start']}..{d['train_end']}, {d['rows']:,} rows")
    gb = res["maxrss_kb"] / 1024 / 1024
    RESULTS.absolute(SPEED, "20x: training peak memory (ru_maxrss)", round(gb, 2), "GB", at_most=2,
                     detail=f"the floor's: {floor['maxrss_kb'] / 1024 / 1024:.2f} GB")
    size = Path(res["model_path"]).stat().st_size / 1e6
    RESULTS.absolute(SPEED, f"20x: model file ({res['kind']})", round(size, 2), "MB", at_most=20)
    means, before = res["means"], res["before"]
    RESULTS.info(QUALITY, "demo 20x: mean holdout-week ROC AUC, " + " / ".join(means),
                 " / ".join(_f(v, 4) for v in means.values()))
    RESULTS.info(QUALITY, "demo 20x: holdout ROC AUC, booked before the evening",
                 round(before["roc_auc"], 3) if before["roc_auc"] is not None else "n/a",
                 detail=f"n={before['n']}, AP {_f(before['average_precision'])}, precision@{before['k']} "
                        f"{_f(before['precision_at_k'])}, calibration error ({res['calibration']}) "
                        f"{_f(before['calibration_error'])}, base rate {_f(before['base_rate'])}")
    scoring_report("demo 20x", db.make_engine(url), target=True)


def main():
    global RESULTS
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-real", action="store_true")
    ap.add_argument("--no-demo", action="store_true")
    ap.add_argument("--no-20x", action="store_true")
    ap.add_argument("--settings", action="store_true", help="also the gradient-boosting settings grid")
    a = ap.parse_args()
    RESULTS = Results("model")
    RESULTS.note(QUALITY, f"Rolling origin: each origin fits on the days before it and scores its next {HORIZON_DAYS} "
                          "days as the chain would, the candidates and both baselines (four-feature, lead time) in "
                          f"the same run. real: the public no-show file (CC BY-NC-SA 4.0), origins "
                          f"{', '.join(REAL_ORIGINS)}; demo 1x: the demo clinic, eight weekly origins before {TODAY}.")
    from clinic_lib.core.config import get_settings
    k = get_settings().call_capacity
    with tempfile.TemporaryDirectory(prefix="bench_model_") as d:
        tmp = Path(d)
        if not a.no_real:
            if REAL.exists():
                bench_real(tmp, k, a.settings)
            else:
                RESULTS.check(QUALITY, "real: the public file", "missing", f"present at {REAL}", False)
        if not a.no_demo:
            bench_demo1(tmp, k, a.settings)
        if not a.no_20x:
            bench_demo20(tmp)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    RESULTS.save()


if __name__ == "__main__":
    main()
