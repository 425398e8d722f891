"""What a command pays before its work: ``clinic`` as a process against Python's own start-up.

    .venv/bin/python bench/bench_startup.py [--repeat 7]

Targets, ratios to floors measured in the same run (medians of ``--repeat`` rounds; in each round
every command runs once, in turn, so that a slow minute of a shared machine meets them all alike):

- ``clinic --help`` as a process: at most 3x (``python -c pass`` as a process + 0.1 s);
- a one-day ``clinic refresh --day D`` as a process: at most 1.5x (``python -c "import pandas,
  sqlalchemy"`` as a process + ``refresh_day`` of the same day in this process, warm).

The refresh runs on the 1x demo clinic in SQLite (bench/common.py), on its first working day of
drops (the drops before it applied first); a refresh of the same day again does the whole work of
the day. Both commands are the ``clinic`` script of this virtualenv, as a user runs them.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import Results, loaded_sqlite, table  # noqa: E402

SUBJECT = "Command start-up"
HELP_ALLOWANCE_S = 0.1  # what `clinic --help` may add to a bare interpreter's start before the 3x


def clinic_command() -> list[str]:
    script = Path(sys.executable).parent / "clinic"
    return [str(script)] if script.exists() else [sys.executable, "-m", "clinic_lib"]


def process_seconds(args: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"{' '.join(args)} failed (exit {out.returncode}):\n{out.stderr}")
    return seconds


def working_day(engine, data: Path) -> str:
    """The first drop day with appointments, the drops up to it applied."""
    from clinic_lib.ingest.refresh import refresh_day
    for day in sorted(p.name for p in (data / "daily").iterdir()):
        refresh_day(day, engine=engine, folder=data / "daily" / day, allow_empty=True)
        with engine.connect() as conn:
            n = conn.exec_driver_sql("SELECT COUNT(*) FROM appointments WHERE local_date = ?", (day,)).scalar()
        if n:
            return day
    raise SystemExit(f"no drop day with appointments in {data / 'daily'}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7, help="rounds (the medians are taken)")
    a = parser.parse_args()
    results = Results("startup")
    from clinic_lib.core import db
    from clinic_lib.ingest.refresh import refresh_day
    url, data = loaded_sqlite(1, name="startup")
    engine = db.make_engine(url)
    day = working_day(engine, data)
    refresh_day(day, engine=engine, folder=data / "daily" / day)  # warm: this process's imports and caches
    clinic = clinic_command()
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as outputs:
        env = dict(os.environ, DATABASE_URL=url, CLINIC_DATA_DIR=str(data), CLINIC_OUTPUTS_DIR=outputs)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "clinic --help": clinic + ["--help"],
            'python -c "import pandas, sqlalchemy"': [sys.executable, "-c", "import pandas, sqlalchemy"],
            f"clinic refresh --day {day}": clinic + ["refresh", "--day", day],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        times["refresh_day in-process"] = []
        for _ in range(a.repeat):
            for name, args in commands.items():
                times[name].append(process_seconds(args, env))
            t0 = time.perf_counter()
            refresh_day(day, engine=engine, folder=data / "daily" / day)
            times["refresh_day in-process"].append(time.perf_counter() - t0)
    engine.dispose()
    med = {name: statistics.median(t) for name, t in times.items()}
    bare, help_ = med["python -c pass"], med["clinic --help"]
    imports, work = med['python -c "import pandas, sqlalchemy"'], med["refresh_day in-process"]
    refresh = med[f"clinic refresh --day {day}"]
    help_floor, refresh_floor = bare + HELP_ALLOWANCE_S, imports + work

    print(table(["command (a process unless it says in-process)", "median s", "floor", "floor s", "ratio", "target"], [
        ["clinic --help", f"{help_:.3f}", f"python -c pass ({bare:.3f}) + {HELP_ALLOWANCE_S} s", f"{help_floor:.3f}",
         f"{help_ / help_floor:.2f}x", "<= 3x"],
        [f"clinic refresh --day {day}", f"{refresh:.3f}",
         f"import pandas, sqlalchemy ({imports:.3f}) + refresh_day in-process ({work:.3f})", f"{refresh_floor:.3f}",
         f"{refresh / refresh_floor:.2f}x", "<= 1.5x"],
    ]))
    results.note(SUBJECT, f"Wall time of each command as a process (the `clinic` script of the virtualenv), median of "
                          f"{a.repeat} rounds in which every command runs once in turn. The refresh: the 1x demo clinic "
                          f"in SQLite, the drop of {day} applied again (the whole work of the day each time).")
    results.info(SUBJECT, "python -c pass", bare, "s")
    results.ratio(SUBJECT, "clinic --help", help_, "s", floor=help_floor,
                  floor_measure=f"python -c pass + {HELP_ALLOWANCE_S:g} s", at_most=3)
    results.info(SUBJECT, 'python -c "import pandas, sqlalchemy"', imports, "s")
    results.info(SUBJECT, f"refresh_day({day}) in-process, warm", work, "s")
    results.ratio(SUBJECT, "clinic refresh, one day", refresh, "s", floor=refresh_floor,
                  floor_measure="import pandas, sqlalchemy + the in-process refresh", at_most=1.5,
                  detail=f"the start-up beyond the floor: {refresh - refresh_floor:.2f} s")
    results.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
