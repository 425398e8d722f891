"""Shared by the bench scripts: ``Results``, which records a bench's figures for
docs/benchmarks.md, and demo databases at a given scale, built once and cached in /tmp.

Recording figures (every bench_*.py does this; ``make bench`` then runs bench/report.py)::

    from common import Results
    results = Results("dashboard")                  # times the machine's reference loop now
    results.note("KPI dashboard", "20x demo (816,005 appointments), median of 3")
    results.absolute("KPI dashboard", "physio filter change", 0.41, "s", at_most=1.0)
    results.ratio("KPI dashboard", "first render", 2.1, "s", floor=0.9, floor_measure="an empty page", at_most=3)
    results.info("KPI dashboard", "first request after the server started", 6.2, "s")
    results.save()                                  # the file is complete

Each call rewrites ``outputs/bench/<name>.json`` (``CLINIC_BENCH_DIR`` elsewhere), so a bench that
stops half-way leaves the rows it measured, marked incomplete. The file holds the machine once
(cores, CPU model, Python, the reference loop's time), the run id (``CLINIC_BENCH_RUN_ID``, set by
``make bench`` so that report.py can tell the files of one run from older ones) and one row per
figure: subject (the table it goes in), measure, figure, unit, target, target kind, scaled target,
met (yes/no).

The kinds of target:

- ``ratio``: to a floor measured in the same run (the least any implementation of the same job
  could take, or the same job without the work being judged). Met when the figure is at most
  ``at_most`` x the floor (at least ``at_least`` x, above ``above`` x); the scaled target is that
  bound in the figure's unit.
- ``absolute``: a bound for a machine whose reference loop, ``sum(range(10**7))``, takes at most
  0.15 s. When the loop is slower the bound scales with it: times (units s, ms, us) are allowed
  loop/0.15 times as long, rates (units ending in /s) need only 0.15/loop of theirs.
- ``fixed``: an absolute bound on something that is not a speed (an ROC AUC, a file's size, peak
  memory): not scaled. ``absolute`` picks it for units that are neither times nor rates.
- ``check``: a target that is not a comparison of two numbers (``check``: figure and target as
  text, met given by the bench); ``info``: a figure without a target.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_TODAY = dt.date(2026, 11, 24)
CACHE = Path(os.environ.get("CLINIC_BENCH_CACHE", "/tmp/clinic-bench"))


def demo_data(scale: int, drop_days: int = 31, history_scale: int = 1) -> Path:
    """data dir with the demo clinic at ``scale`` (1x = 8 physios, 3,200 patients, 2 years).

    ``history_scale`` lengthens the history instead (same clinic, same daily volume, 20 x 2 years),
    which is what "a day's refresh must not grow with history" is about.
    """
    from clinic_lib.ingest.demo import generate_demo
    folder = CACHE / f"data-{scale}x-h{history_scale}-v2"
    if not (folder / "raw" / "appointments.csv").exists():
        shutil.rmtree(folder, ignore_errors=True)
        generate_demo(folder, seed=7, today=BENCH_TODAY, physios=8 * scale, patients=3200 * scale * history_scale,
                      days_history=730 * history_scale, days_ahead=21, drop_days=drop_days)
    return folder


def loaded_sqlite(scale: int, name: str = "clinic", history_scale: int = 1) -> tuple[str, Path]:
    """A SQLite copy of the demo at ``scale`` after the initial load (copied fresh each call)."""
    from clinic_lib.core import db
    from clinic_lib.core.migrate import CURRENT_VERSION
    from clinic_lib.ingest.refresh import load_raw
    data = demo_data(scale, history_scale=history_scale)
    master = CACHE / f"loaded-{scale}x-h{history_scale}-schema{CURRENT_VERSION}.db"  # new schema: new load
    if not master.exists():
        engine = db.make_engine(f"sqlite:///{master}")
        load_raw(engine, folder=data / "raw")
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        engine.dispose()
    target = CACHE / f"{name}-{scale}x-h{history_scale}.db"
    remove_sqlite(target)
    shutil.copy(master, target)
    return f"sqlite:///{target}", data


def remove_sqlite(path: Path) -> None:
    """Delete a SQLite database file with its WAL and shared-memory files."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def empty_sqlite(path: Path):
    """An engine on a new, empty SQLite database of the current schema at ``path``."""
    from clinic_lib.core import db
    from clinic_lib.core.migrate import migrate
    remove_sqlite(path)
    engine = db.make_engine(f"sqlite:///{path}")
    migrate(engine)
    return engine


def timed(fn, repeat: int = 5) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def synthetic_scores(engine, first: str, last: str, model_version: str = "synthetic") -> int:
    """Risk scores for the clinic days in [first, last] (SQLite): every appointment booked before
    its day and not canceled by then, as the evening before would have scored it, with random
    risks (the rows are the point, not the figures). Returns the number of scores in the range."""
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM risk_scores WHERE day BETWEEN ? AND ?", (first, last))
        conn.exec_driver_sql(
            "INSERT INTO risk_scores (day, appointment_id, risk, risk_bucket, model_version, scored_at) "
            "SELECT local_date, appointment_id, r, CASE WHEN r < 0.10 THEN 'low' WHEN r < 0.25 THEN 'medium' "
            "ELSE 'high' END, ?, local_date || 'T00:00:00+00:00' FROM ("
            "  SELECT local_date, appointment_id, (abs(random()) % 10000) / 20000.0 AS r FROM appointments"
            "   WHERE local_date BETWEEN ? AND ? AND booked_at < local_date"
            "     AND (canceled_at IS NULL OR canceled_at >= local_date))", (model_version, first, last))
        return conn.exec_driver_sql("SELECT COUNT(*) FROM risk_scores WHERE day BETWEEN ? AND ?",
                                    (first, last)).scalar()


# --- recording figures ----------------------------------------------------------------------------

LOOP_LIMIT_SECONDS = 0.15  # the reference machine: sum(range(10**7)) in at most this
TIME_UNITS = {"s", "ms", "us"}
KIND_TEXT = {
    "ratio": "ratio to floor '{floor}' measured in the same run",
    "absolute": "absolute, scaled by loop/0.15 when the loop is slower",
    "fixed": "absolute, not a speed: not scaled",
    "check": "check (not a comparison of numbers)",
    "info": "no target",
}
OPS = {"at_most": "<=", "at_least": ">=", "above": ">", "below": "<"}


def bench_dir() -> Path:
    return Path(os.environ.get("CLINIC_BENCH_DIR") or ROOT / "outputs" / "bench")


def reference_loop_seconds(repeat: int = 3) -> float:
    """The median time of ``sum(range(10**7))`` over ``repeat`` tries: how fast this machine is now."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        sum(range(10 ** 7))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine(loop_seconds: float) -> dict:
    cpu = platform.processor() or platform.machine()
    memory_gb = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu_model": cpu, "memory_gb": memory_gb,
            "python": platform.python_version(), "system": f"{platform.system()} {platform.release()}",
            "loop": "sum(range(10**7))", "loop_seconds": round(loop_seconds, 4),
            "loop_limit_seconds": LOOP_LIMIT_SECONDS}


def number(value: float, digits: int | None = None) -> str:
    """A figure as the tables show it: three significant digits (or ``digits`` decimals),
    thousands separated."""
    if digits is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:,.{digits}f}"
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return str(value)
    a = abs(value)
    if a >= 100 or isinstance(value, int):
        return f"{value:,.0f}"
    if a >= 10:
        return f"{value:.1f}"
    if a >= 1:
        return f"{value:.2f}"
    if a == 0:
        return "0"
    digits = 2
    while a * 10 ** digits < 100:  # three significant digits below 1
        digits += 1
    return f"{value:.{digits}f}"


def bound_number(value: float) -> str:
    """A target's bound as written: 0.2, 1.3, 1,000 (not rounded to three digits)."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:g}"


def with_unit(value, unit: str, shown=number, digits: int | None = None) -> str:
    if digits is not None:
        return with_unit(value, unit, lambda v: number(v, digits))
    if unit in ("", None):
        return shown(value)
    if unit in ("x", "%"):
        return f"{shown(value)}{unit}"
    return f"{shown(value)} {unit}"


class Results:
    """The figures of one bench in one run, written to ``outputs/bench/<name>.json`` as they come.

    ``name``: the bench (bench_<name>.py). ``loop_seconds``, ``run_id``, ``folder``: measured /
    read from the environment / outputs/bench unless given (tests give them).
    """

    def __init__(self, name: str, loop_seconds: float | None = None, run_id: str | None = None,
                 folder: Path | None = None, quiet: bool = False):
        self.name = name
        self.quiet = quiet
        self.loop_seconds = reference_loop_seconds() if loop_seconds is None else float(loop_seconds)
        started = dt.datetime.now(dt.timezone.utc)
        self.run_id = run_id or os.environ.get("CLINIC_BENCH_RUN_ID") or f"single-{started:%Y%m%dT%H%M%SZ}-{name}"
        self.path = Path(folder or bench_dir()) / f"{name}.json"
        self.data = {
            "bench": name, "run_id": self.run_id, "script": f"bench/bench_{name}.py", "argv": sys.argv[1:],
            "started_at": started.isoformat(timespec="seconds"), "finished_at": None, "complete": False,
            "load_average": {"start": _load_average(), "end": None},
            "machine": machine(self.loop_seconds), "notes": {}, "rows": [],
        }
        self._write()

    @property
    def loop_factor(self) -> float:
        """How much slower than the reference machine this one is now (1 when it is as fast or faster)."""
        return max(1.0, self.loop_seconds / LOOP_LIMIT_SECONDS)

    # -- the kinds of row --

    def ratio(self, subject: str, measure: str, figure: float, unit: str, *, floor: float, floor_measure: str,
              target: str | None = None, detail: str = "", digits: int | None = None, **bound) -> dict:
        """``figure`` against ``floor`` (same unit, same run): one of at_most / at_least / above /
        below = the factor the figure may be of the floor."""
        op, factor = _bound(bound)
        scaled = factor * floor
        text = target or _ratio_text(op, factor, floor_measure)
        return self._add(subject, measure, figure, unit, text, "ratio", op, factor, scaled, detail,
                         floor={"measure": floor_measure, "figure": floor, "unit": unit},
                         ratio=(figure / floor) if floor else None, digits=digits)

    def absolute(self, subject: str, measure: str, figure: float, unit: str, *, scaled: bool | None = None,
                 target: str | None = None, detail: str = "", digits: int | None = None, **bound) -> dict:
        """``figure`` against a fixed bound (at_most / at_least / above / below), scaled by the
        reference loop for times and rates unless ``scaled`` says otherwise."""
        op, value = _bound(bound)
        if scaled is None:
            scaled = unit in TIME_UNITS or unit.endswith("/s")
        kind, limit = ("absolute", value) if scaled else ("fixed", value)
        if scaled:
            limit = value * self.loop_factor if op in ("<=", "<") else value / self.loop_factor
        text = target or f"{op} {with_unit(value, unit, bound_number)}"
        return self._add(subject, measure, figure, unit, text, kind, op, value, limit, detail, digits=digits)

    def check(self, subject: str, measure: str, figure: str, target: str, met: bool, detail: str = "") -> dict:
        return self._add(subject, measure, figure, "", target, "check", None, None, None, detail, met=met)

    def info(self, subject: str, measure: str, figure, unit: str = "", detail: str = "",
             digits: int | None = None) -> dict:
        return self._add(subject, measure, figure, unit, "", "info", None, None, None, detail, digits=digits)

    def note(self, subject: str, text: str) -> None:
        """A line printed under the subject's heading (what was measured on what)."""
        self.data["notes"].setdefault(subject, []).append(text)
        self._write()

    def save(self) -> Path:
        """Mark the file complete (every figure the bench meant to measure is in)."""
        self.data.update(finished_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), complete=True)
        self.data["load_average"]["end"] = _load_average()
        self._write()
        return self.path

    @property
    def rows(self) -> list[dict]:
        return self.data["rows"]

    def _add(self, subject, measure, figure, unit, target, kind, op, bound, scaled_target, detail,
             floor=None, ratio=None, met=None, digits=None) -> dict:
        if isinstance(figure, float) and figure != figure:
            raise ValueError(f"{measure}: the figure is NaN")
        if met is None and op is not None:
            met = {"<=": figure <= scaled_target, ">=": figure >= scaled_target,
                   ">": figure > scaled_target, "<": figure < scaled_target}[op]
        row = {"subject": subject, "measure": measure, "figure": figure, "unit": unit, "target": target,
               "kind": kind, "target_kind": KIND_TEXT[kind].format(floor=(floor or {}).get("measure")),
               "op": op, "bound": bound, "floor": floor, "ratio": ratio, "scaled_target": scaled_target,
               "met": None if met is None else ("yes" if met else "no"), "detail": detail, "digits": digits}
        self.data["rows"].append(row)
        self._write()
        if not self.quiet:
            shown = f"{subject}: {measure}: {with_unit(figure, unit, digits=digits)}"
            if kind == "ratio":
                shown += f" ({number(ratio)}x {floor['measure']} = {with_unit(floor['figure'], unit, digits=digits)})"
            if row["met"] is not None:
                shown += f"; target {target}" + (f" = {with_unit(scaled_target, unit, digits=digits)}"
                                                   if scaled_target is not None and kind != "fixed" else "")
                shown += f": met {row['met']}"
            print(shown, flush=True)
        return row

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


def _bound(bound: dict) -> tuple[str, float]:
    if len(bound) != 1 or next(iter(bound)) not in OPS:
        raise TypeError(f"give exactly one of {', '.join(OPS)}, got {', '.join(bound) or 'none'}")
    key, value = next(iter(bound.items()))
    return OPS[key], float(value)


def _ratio_text(op: str, factor: float, floor_measure: str) -> str:
    if factor == 1:
        return f"{op} {floor_measure}"
    if factor < 1 and op in ("<=", "<"):
        return f"{op} {bound_number(factor * 100)} % of {floor_measure}"
    return f"{op} {bound_number(factor)}x {floor_measure}"


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None
