"""Bench of the demo generator: ``clinic demo --scale N`` end to end (process start, simulation,
every CSV of data/raw and 14 daily drops), in a temporary data folder.

    .venv/bin/python bench/bench_demo.py              # scales 1 and 20
    .venv/bin/python bench/bench_demo.py --scales 1,5,20

Target: --scale 20 (160 physios, 64,000 patients, 2 years + 21 days ahead) in at most 60 s
(absolute, scaled by the reference loop). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import Results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SUBJECT = "Demo generator"
TODAY = "2026-11-24"
TARGET_S = {20: 60.0}


def run(scale: int, folder: Path) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "clinic_lib", "demo", "--scale", str(scale), "--seed", "7", "--today", TODAY,
           "--data-dir", str(folder)]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"clinic demo --scale {scale} failed:\n{out.stderr}")
    summary = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    size = sum(p.stat().st_size for p in folder.rglob("*.csv"))
    summary["csv_mb"] = f"{size / 1e6:.0f}"
    return seconds, summary


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scales", default="1,20")
    scales = [int(s) for s in parser.parse_args().scales.split(",")]
    results = Results("demo")
    results.note(SUBJECT, f"`clinic demo --scale N --today {TODAY}` as a process, end to end (process start, "
                          "simulation, every CSV of data/raw and 14 daily drops), 2 years of history and 21 days ahead.")
    rows = []
    for scale in scales:
        with tempfile.TemporaryDirectory(prefix=f"clinic-demo-{scale}x-") as tmp:
            seconds, s = run(scale, Path(tmp))
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        target = TARGET_S.get(scale)
        detail = (f"{s['physios']} physios, {int(s['patients']):,} patients, {int(s['raw_appointments']):,} "
                  f"appointments in raw, {s['csv_mb']} MB of CSV; peak RSS so far {peak_mb:,.0f} MB")
        if target:
            results.absolute(SUBJECT, f"clinic demo --scale {scale}", seconds, "s", at_most=target, detail=detail)
        else:
            results.info(SUBJECT, f"clinic demo --scale {scale}", seconds, "s", detail=detail)
        rows.append([f"{scale}x", s["physios"], f"{int(s['patients']):,}", f"{int(s['appointments']):,}",
                     f"{int(s['raw_appointments']):,}", f"{int(s['payments']):,}", s["csv_mb"],
                     f"{seconds:.1f}", f"{peak_mb:,.0f}",
                     f"< {target:.0f}" if target else "-",
                     ("yes" if seconds < target else "NO") if target else "-"])
    head = ["scale", "physios", "patients", "appointments (world)", "in raw", "payments", "CSV MB",
            "seconds", "peak RSS MB (max so far)", "target s", "ok"]
    print(f"\n`clinic demo --scale N --today {TODAY}` (2 years history, 21 days ahead, 14 drops), "
          "wall clock incl. process start\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")
    results.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
