"""Bench of the validation gate at 20x (~1M appointments).

    .venv/bin/python bench/bench_validate.py            # builds /tmp/clinic_bench_20x.db once, then times
    .venv/bin/python bench/bench_validate.py --rebuild  # rebuild the cached database
    .venv/bin/python bench/bench_validate.py --source synthetic   # skip the demo generator

Targets (absolute, scaled by the reference loop), on the median of ``--repeat``: database
validation <= 1 s on SQLite; drop validation of one day <= 0.2 s. The database comes from the demo
generator (160 physios, 64,000 patients), or with ``--source synthetic`` from a vectorised
synthetic clinic of the same size. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from common import Results  # noqa: E402

CACHE = Path(tempfile.gettempdir()) / "clinic_bench_validate_20x"
TODAY = dt.date(2026, 11, 24)


def _synthetic(folder: Path, physios=160, patients=64000, days_history=730, days_ahead=21, seed=7):
    """Write data/raw and one drop (TODAY) in the dataset format, vectorised (no Python row loops)."""
    from clinic_lib.ingest.drop_format import write_csv
    rng = np.random.default_rng(seed)
    tz = "Europe/Berlin"
    raw, drop = folder / "raw", folder / "daily" / TODAY.isoformat()
    ph = pd.DataFrame({"physio_id": np.arange(1, physios + 1), "full_name": [f"Physio {i}" for i in range(1, physios + 1)],
                       "active": 1})
    hours = pd.DataFrame([(p, d, s, e) for p in ph.physio_id for d in range(5)
                          for s, e in (("08:00", "12:00"), ("13:00", "18:00"))],
                         columns=["physio_id", "weekday", "start_time", "end_time"])
    pid = np.arange(1, patients + 1)
    pt = pd.DataFrame({"patient_id": pid, "first_name": "Pat", "last_name": [f"N{i}" for i in pid],
                       "phone": [f"+49 30 {1000000 + i}" for i in pid], "email": [f"p{i}@example.org" for i in pid],
                       "consent_form_received": 1, "reminder_consent": 1, "date_of_birth": "1980-01-01",
                       "gender": "F", "created_at": "2024-01-01T09:00:00+01:00"})
    days = pd.bdate_range(TODAY - dt.timedelta(days=days_history), TODAY + dt.timedelta(days=days_ahead))
    slots = [dt.timedelta(hours=8, minutes=30 * k) for k in range(8)] + \
            [dt.timedelta(hours=13, minutes=30 * k) for k in range(10)]
    grid = pd.MultiIndex.from_product([ph.physio_id, days, range(len(slots))], names=["physio_id", "day", "slot"]).to_frame(index=False)
    grid = grid[rng.random(len(grid)) < 0.62].reset_index(drop=True)
    offs = pd.to_timedelta(np.array(slots, dtype="timedelta64[ns]")[grid.slot.to_numpy()])
    start = (grid.day + offs).dt.tz_localize(tz, nonexistent="shift_forward", ambiguous=False)
    n = len(grid)
    per = patients // physios  # each physio has their own patients: no patient overlaps by construction
    patient = (grid.physio_id.to_numpy() - 1) * per + 1 + ((np.arange(n) * 7919) % per)
    # a patient of a physio can still be seen twice in the same slot only via another physio: impossible
    end = start + pd.Timedelta(minutes=30)
    booked = start - pd.to_timedelta(rng.integers(1, 30, n), unit="D")
    today_end = pd.Timestamp(TODAY + dt.timedelta(days=1)).tz_localize(tz)
    past = (start < pd.Timestamp(TODAY).tz_localize(tz)).to_numpy()
    u = rng.random(n)
    status = np.where(past, np.where(u < 0.8, "completed", np.where(u < 0.9, "canceled", "no_show")),
                      np.where(u < 0.9, "booked", "canceled"))
    is_today = ((start >= pd.Timestamp(TODAY).tz_localize(tz)) & (start < today_end)).to_numpy()
    status = np.where(is_today & (status == "booked"), "completed", status)
    booked = booked.where(booked < pd.Timestamp(TODAY).tz_localize(tz), start - pd.Timedelta(days=1))
    canceled = (start - pd.Timedelta(hours=30)).where(status == "canceled")
    canceled = canceled.where(canceled > booked, booked + pd.Timedelta(minutes=5))
    iso = lambda s: s.dt.strftime("%Y-%m-%dT%H:%M:%S%z").str.replace(r"(\d\d)(\d\d)$", r"\1:\2", regex=True)  # noqa: E731
    ap = pd.DataFrame({"appointment_id": np.arange(1, n + 1), "patient_id": patient, "physio_id": grid.physio_id,
                       "appt_start": iso(start), "appt_end": iso(end), "booked_at": iso(booked), "status": status,
                       "canceled_at": iso(canceled).where(status == "canceled", ""), "price_estimate": "65.00",
                       "is_first_visit": 0})
    done = ap[ap.status == "completed"]
    pay = pd.DataFrame({"payment_id": np.arange(1, len(done) + 1), "appointment_id": done.appointment_id.to_numpy(),
                        "amount": "65.00", "paid_at": iso(end[done.index] + pd.Timedelta(minutes=5)).to_numpy(),
                        "method": "card"})
    day_mask = is_today
    write_csv(ph, raw / "physios.csv"); write_csv(hours, raw / "physio_hours.csv"); write_csv(pt, raw / "patients.csv")
    write_csv(ap[~day_mask], raw / "appointments.csv")
    today_pay = pay.appointment_id.isin(ap.appointment_id[day_mask])
    write_csv(pay[~today_pay], raw / "payments.csv")
    drop_ap = ap[day_mask]
    write_csv(drop_ap, drop / "appointments.csv"); write_csv(pay[today_pay], drop / "payments.csv")
    write_csv(pt[pt.patient_id.isin(drop_ap.patient_id)], drop / "patients.csv")
    write_csv(ph, drop / "physios.csv")


def build(rebuild: bool, source: str) -> tuple[Path, Path]:
    """The cached 20x database (SQLite file) and the drop folder of TODAY."""
    from clinic_lib.core import db
    from clinic_lib.ingest.refresh import load_raw
    dbfile, data = CACHE / "clinic.db", CACHE / "data"
    if dbfile.exists() and not rebuild:
        from clinic_lib.core.migrate import migrate
        engine = db.make_engine(f"sqlite:///{dbfile}")
        if migrate(engine):  # a cache built before the latest migration: bring it up to date
            with engine.connect() as conn:
                conn.exec_driver_sql("ANALYZE")
        engine.dispose()
        return dbfile, data
    import shutil
    shutil.rmtree(CACHE, ignore_errors=True)
    data.mkdir(parents=True)
    t0 = time.perf_counter()
    if source == "demo":
        from clinic_lib.ingest.demo import generate_demo
        generate_demo(data, seed=7, today=TODAY, physios=160, patients=64000, days_history=730, days_ahead=21,
                      drop_days=1)
    else:
        _synthetic(data)
    engine = db.make_engine(f"sqlite:///{dbfile}")
    load_raw(engine, folder=data / "raw")
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    print(f"built {dbfile} from {source} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return dbfile, data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--source", choices=("demo", "synthetic"), default="demo")
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args(argv)
    results = Results("validate")
    dbfile, data = build(a.rebuild, a.source)
    os.environ["CLINIC_DATA_DIR"] = str(data)
    os.environ["CLINIC_OUTPUTS_DIR"] = str(CACHE / "outputs")
    os.environ["DATABASE_URL"] = f"sqlite:///{dbfile}"
    from clinic_lib.core import db
    from clinic_lib.validation.database import validate_db
    from clinic_lib.validation.drop import validate_drop
    engine = db.make_engine(f"sqlite:///{dbfile}")
    with engine.connect() as conn:
        n_appt = conn.exec_driver_sql("SELECT count(*) FROM appointments").scalar()
        n_pay = conn.exec_driver_sql("SELECT count(*) FROM payments").scalar()
    day = sorted(x.name for x in (data / "daily").iterdir())[-1]
    rows = []
    for label, fn, target in (
            ("database validation (validate_db)", lambda: validate_db(engine, record=False), 1.0),
            (f"drop validation of {day} (validate_drop)", lambda: validate_drop(day, engine, record=False), 0.2)):
        fn()  # warm-up (page cache, imports)
        times, cpu, report = [], [], None
        for _ in range(a.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            report = fn()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        best, median = min(times), float(np.median(times))
        rows.append((label, median, best, float(np.median(cpu)), target, report))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n20x database: {n_appt:,} appointments, {n_pay:,} payments ({a.source}); SQLite; "
          f"median and best of {a.repeat}; {os.cpu_count()} CPUs, load average {load:.1f} at the end\n")
    subject = "Validation gate"
    results.note(subject, f"SQLite, the 20x demo clinic: {n_appt:,} appointments, {n_pay:,} payments ({a.source}); "
                          f"median of {a.repeat} after a warm-up.")
    print("| measurement | median s | best s | CPU s (all threads) | target s | ok (median) | findings |")
    print("|---|---:|---:|---:|---:|---|---|")
    for label, median, best, cpu_s, target, report in rows:
        found = ", ".join(f"{c.id}={c.count}" for c in report.failed) or "none"
        print(f"| {label} | {median:.3f} | {best:.3f} | {cpu_s:.3f} | {target:.1f} | "
              f"{'yes' if median <= target else 'NO'} | {found} |")
        results.absolute(subject, label, median, "s", at_most=target,
                         detail=f"best {best:.3f} s; {cpu_s:.2f} CPU s on all threads; findings: {found}")
    engine.dispose()
    results.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
