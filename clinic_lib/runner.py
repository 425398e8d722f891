"""The daily chain: each step a parameterized notebook executed by papermill (the one place
papermill is used).

For the end of clinic day D the chain is::

    validate D's drop -> refresh D -> train (only when the model is missing or stale)
    -> score the next clinic day -> build its priorities -> write its reminders -> run report

Each executed notebook is kept as the record of the run in ``outputs/runs/D/NN_step.ipynb``; a
``state.json`` beside them records which steps succeeded, so ``--resume`` can skip them. Only one
run at a time may write: a second run exits at once with a clear message (see ``RunLocked``).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from .config import PROJECT_ROOT, get_settings
from .errors import CannotRun, UserError
from .kernels import RunStopped
from .timeutil import parse_day, utc_now_text

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
log = logging.getLogger("clinic.run")


@dataclass(frozen=True)
class Step:
    name: str
    notebook: str  # file in notebooks/
    about: str


STEPS = (
    Step("validate", "validate.ipynb", "check D's drop before anything is written"),
    Step("refresh", "refresh.ipynb", "apply D's drop to the database"),
    Step("train", "train.ipynb", "retrain the cancellation-risk model when missing or stale"),
    Step("score", "score.ipynb", "score the next clinic day's appointments"),
    Step("priorities", "priorities.ipynb", "build the next clinic day's callback list"),
    Step("reminders", "reminders.ipynb", "write the next clinic day's reminder emails"),
    Step("report", "", "render the run report (outputs/runs/D/report.html)"),
)
STEP_NAMES = tuple(s.name for s in STEPS)


class StepFailed(UserError):
    """A step's notebook raised; the message names the step, the error and the saved notebook."""


class RunLocked(UserError):
    exit_code = 3


@dataclass
class StepResult:
    name: str
    status: str  # ok / skipped / failed
    seconds: float = 0.0
    notebook: Path | None = None
    note: str = ""


@dataclass
class RunResult:
    day: dt.date
    steps: list[StepResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.status != "failed" for s in self.steps)


def parse_steps(text: str | None) -> tuple[str, ...]:
    if not text:
        return STEP_NAMES
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [n for n in names if n not in STEP_NAMES]
    if unknown or not names:
        raise CannotRun(f"unknown step(s) {', '.join(unknown) or '(none)'}; the steps are {', '.join(STEP_NAMES)}")
    return tuple(n for n in STEP_NAMES if n in names)  # always in chain order


def run_dir(day: dt.date) -> Path:
    return get_settings().runs_dir / day.isoformat()


def _state_path(day) -> Path:
    return run_dir(day) / "state.json"


def read_state(day) -> dict:
    path = _state_path(day)
    return json.loads(path.read_text()) if path.exists() else {"day": str(day), "steps": {}}


def _write_state(day, state: dict) -> None:
    path = _state_path(day)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, path)


def step_parameters(step: str, day: dt.date, engine=None, empty_day: bool = False) -> dict:
    """The notebook parameters of a step for the run of day D (strings, as papermill passes them)."""
    if step in ("validate", "refresh"):
        return {"day": day.isoformat(), "allow_empty": empty_day}
    if step == "train":
        return {"as_of": day.isoformat()}
    from .calendar import next_clinic_day
    target = next_clinic_day(engine, day)
    if step == "reminders":
        return {"day": target.isoformat(), "dry_run": False}
    return {"day": target.isoformat()}


def _model_exists() -> bool:
    from .predict import model_path
    return model_path().exists()


def _model_needs_training() -> bool:
    from .predict import needs_training
    return needs_training()


def execute_notebook(notebook: Path, output: Path, parameters: dict, progress: bool = True) -> None:
    """Run one notebook with papermill (kernel python3, cwd notebooks/), keeping the executed copy.

    The kernel is a ``kernels.RunKernelManager``'s: over IPC where the platform has it, and
    stopped with the run (``kernels.stopping_kernels_on_signals``).
    """
    import papermill as pm

    from .kernels import RunKernelManager
    output.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name="python3",
                        cwd=str(notebook.parent), progress_bar=progress, log_output=False,
                        request_save_on_cell_execute=False, kernel_manager_class=RunKernelManager)


def _error_summary(exc: Exception) -> str:
    name = getattr(exc, "ename", type(exc).__name__)
    value = getattr(exc, "evalue", str(exc))
    return f"{name}: {value}".strip()


_working_on = ["the start of the run"]


def working_on(what: str) -> None:
    """Say what the run is doing now (for the message of a run that is stopped)."""
    _working_on[0] = what


def current_work() -> str:
    return _working_on[0]


def os_error_text(exc: OSError) -> str:
    """'<path>: <cause>' in words, for a one-line message."""
    path = exc.filename or ""
    cause = exc.strerror or type(exc).__name__
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        cause += " (a file is where a folder is needed)"
    return f"{path}: {cause}" if path else cause


def prepare_run_dir(day: dt.date) -> dict:
    """Create D's run folder and read its state: before the first step, so an OS error here is a
    run that could not start (CannotRun, exit 2), not a failed step."""
    try:
        run_dir(day).mkdir(parents=True, exist_ok=True)
        return read_state(day)
    except OSError as exc:
        raise CannotRun(f"could not run: cannot prepare the run folder, {os_error_text(exc)}") from exc
    except ValueError as exc:  # state.json that is not JSON
        raise CannotRun(f"could not run: {_state_path(day)} is not a run record ({exc}); "
                        "remove it to start the day's record afresh") from exc


def run_day(day, steps: tuple[str, ...] = STEP_NAMES, resume: bool = False, quiet: bool = False,
            empty_day: bool = False, engine=None) -> RunResult:
    """Run the chain for clinic day ``day``; stops at the first failing step (raises StepFailed)."""
    from . import db
    day = parse_day(day)
    engine = engine or db.make_engine()
    out_dir = run_dir(day)
    state = prepare_run_dir(day)
    result = RunResult(day)
    no_drop = no_drop_reason(day, engine, empty_day) if {"validate", "refresh"} & set(steps) else None
    for index, step in enumerate(STEPS, start=1):
        if step.name not in steps:
            continue
        if resume and state["steps"].get(step.name, {}).get("status") == "ok":
            result.steps.append(StepResult(step.name, "skipped", note="succeeded before (--resume)"))
            log.info("%s %s: skipped, succeeded before", day, step.name)
            continue
        t0 = time.perf_counter()
        output = out_dir / f"{index:02d}_{step.name}.ipynb" if step.notebook else None
        nothing_to_do = step.name in ("validate", "refresh") and no_drop
        try:
            if nothing_to_do:
                # Nothing to check or apply: the day is recorded as done, the database is untouched.
                res = StepResult(step.name, "ok", 0.0, note=no_drop)
                log.info("%s %s: nothing to do, %s", day, step.name, no_drop)
            else:
                log.info("%s %s: start (%s)", day, step.name, step.about)
                working_on(f"day {day}, step '{step.name}'")
                res = _run_step(step, day, output, engine, empty_day, quiet, t0)
            entry = {"status": "ok", "at": utc_now_text(), "seconds": round(res.seconds, 2)}
            entry.update({"note": res.note} if res.note else {})
            state["steps"][step.name] = entry
            _write_state(day, state)
        except RunStopped:
            state["steps"][step.name] = {"status": "stopped", "at": utc_now_text()}
            with contextlib.suppress(OSError):
                _write_state(day, state)
            raise
        except Exception as exc:  # papermill's error carries the notebook's exception
            seconds = time.perf_counter() - t0
            summary = _error_summary(exc)
            state["steps"][step.name] = {"status": "failed", "at": utc_now_text(), "error": summary}
            try:
                _write_state(day, state)
            except OSError as record_exc:
                summary += f" (and its record could not be written: {os_error_text(record_exc)})"
            result.steps.append(StepResult(step.name, "failed", seconds, output, summary))
            where = f"; open {output} to see where" if output is not None and output.exists() else ""
            raise StepFailed(f"day {day}, step '{step.name}' failed: {summary}{where}") from exc
        result.steps.append(res)
        if not nothing_to_do:
            log.info("%s %s: ok in %.1f s", day, step.name, res.seconds)
    return result


def _run_step(step: Step, day: dt.date, output: Path | None, engine, empty_day: bool, quiet: bool,
              t0: float) -> StepResult:
    """One step of D's chain (its notebook to ``output``); raises what the step raised."""
    if step.name == "report":
        from .report import render_run_report
        path = render_run_report(run_dir(day))
        return StepResult(step.name, "ok", time.perf_counter() - t0, path)
    if step.name == "train" and not _model_needs_training():
        # No kernel start for a model that is fresh: the step is done by not being needed.
        log.info("%s train: model is fresh (younger than MODEL_MAX_AGE_DAYS), not retrained", day)
        return StepResult(step.name, "ok", time.perf_counter() - t0, note="model is fresh, not retrained")
    if step.name == "score" and not _model_exists():
        # A young clinic without enough history has no model yet: the callback list then uses
        # the heuristic risk (and says so); that is not a failure of the evening's run.
        log.warning("%s score: no model yet (too little history to train): the callback list "
                    "uses the heuristic risk", day)
        return StepResult(step.name, "ok", time.perf_counter() - t0, note="no model yet: heuristic risk")
    try:
        params = step_parameters(step.name, day, engine, empty_day)
        execute_notebook(NOTEBOOKS_DIR / step.notebook, output, params, progress=not quiet)
    except Exception as exc:
        if step.name == "train" and getattr(exc, "ename", "") == "NotEnoughData":
            log.warning("%s train: %s; going on without a model", day, _error_summary(exc))
            return StepResult(step.name, "ok", time.perf_counter() - t0, output, "too little history: not trained")
        raise
    return StepResult(step.name, "ok", time.perf_counter() - t0, output)


def run_lock(timeout: float = 0):
    """The project-wide run lock (outputs/.run.lock): two runs never interleave their writes."""
    settings = get_settings()
    settings.outputs_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(settings.outputs_dir / ".run.lock"), timeout=timeout)


def locked(timeout: float = 0):
    """Take the run lock; a lock that cannot even be created is a run that could not start."""
    try:
        lock = run_lock(timeout)
        lock.acquire()
    except Timeout:  # (an OSError too: first)
        raise RunLocked("another run_daily.py is running (lock outputs/.run.lock held); "
                        "this run did nothing. Try again when it has finished, or pass "
                        "--wait SECONDS to wait for it.") from None
    except OSError as exc:
        raise CannotRun(f"could not run: cannot take the run lock, {os_error_text(exc)}") from exc
    return lock


def default_day() -> dt.date:
    from .timeutil import today_local
    return today_local(get_settings().clinic_tz)


def has_drop(day) -> bool:
    return get_settings().drop_dir(day).is_dir()


def no_drop_reason(day, engine, closed: bool) -> str | None:
    """Why a day without a drop folder has nothing to apply (None: it has a drop, or it should).

    A day the user says was closed (``--empty-day``, ``--closed``) or a day off the roster (no
    physio works that weekday) without an export is an empty day; a roster day is not (the
    caller says what to do).
    """
    import sqlalchemy as sa

    from .calendar import is_roster_day
    if has_drop(day):
        return None
    if closed:
        return "no drop: the clinic was closed (--empty-day / --closed)"
    try:
        roster_day = is_roster_day(engine, day)
    except sa.exc.SQLAlchemyError as exc:
        raise CannotRun(f"could not run: the database could not be read for the roster: "
                        f"{str(getattr(exc, 'orig', exc)).splitlines()[0]}") from exc
    if not roster_day:
        return f"no drop on a {parse_day(day):%A}, a day off the roster: nothing to apply"
    return None


def _missing_roster_days_message(days: list[dt.date]) -> str:
    named = ", ".join(f"{d} ({d:%A})" for d in days)
    listed = ",".join(str(d) for d in days)
    folders = ", ".join(str(get_settings().drop_dir(d)) for d in days)
    return (f"no drop for {named}, {'a day' if len(days) == 1 else 'days'} on the roster; nothing of the "
            f"range was run. Put the export of {'that day' if len(days) == 1 else 'those days'} in "
            f"{folders} (re-export it from the practice software), or, if the clinic was closed, "
            f"name {'it' if len(days) == 1 else 'them'}: --closed {listed}")


def run_range(first, last, steps: tuple[str, ...] = STEP_NAMES, resume: bool = False,
              quiet: bool = False, empty_day: bool = False, closed=(), engine=None) -> list[RunResult]:
    """Catch up the days from ``first`` to ``last`` in order; stops at the first bad day.

    The days before the last that have a drop are validated and refreshed (as far as ``steps``
    asks) in one notebook (one kernel for the range, ``notebooks/backfill.ipynb``); the last day
    then runs the requested steps. Scores, callback lists and reminders are for the day ahead, so
    the days before the last get none. The days in ``closed`` (every day, with ``empty_day``) may
    have a drop without rows; a day without a drop folder is recorded as empty when it is closed
    or off the roster, and on a roster day stops the range before anything runs (CannotRun).
    """
    from . import db
    from .backfill import days_between
    days = days_between(first, last)
    closed = {parse_day(d) for d in closed}
    outside = sorted(d for d in closed if not days[0] <= d <= days[-1])
    if outside:
        raise CannotRun(f"--closed {', '.join(map(str, outside))}: not in the range {days[0]} .. {days[-1]}")
    engine = engine or db.make_engine()
    wanted = tuple(s for s in ("validate", "refresh") if s in steps)
    is_closed = {d: empty_day or d in closed for d in days}
    no_drop = {d: no_drop_reason(d, engine, is_closed[d]) for d in days if wanted and not has_drop(d)}
    unexplained = [d for d, reason in no_drop.items() if reason is None]
    if unexplained:
        raise CannotRun(_missing_roster_days_message(unexplained))
    earlier, last_day = days[:-1], days[-1]
    prepare_run_dir(last_day)  # the backfill's record goes there: a folder that cannot be made stops us now
    if resume:
        earlier = [d for d in earlier if not _done(d, wanted)]
    with_drop = [d for d in earlier if d not in no_drop]
    if with_drop and wanted:
        t0 = time.perf_counter()
        output = run_dir(last_day) / f"00_backfill_{with_drop[0]}_{with_drop[-1]}.ipynb"
        log.info("%s .. %s backfill: %s %d day(s) in one kernel", with_drop[0], with_drop[-1],
                 " and ".join(wanted), len(with_drop))
        working_on(f"the backfill {with_drop[0]} .. {with_drop[-1]}")
        try:
            execute_notebook(NOTEBOOKS_DIR / "backfill.ipynb", output,
                             {"days": ",".join(map(str, with_drop)), "steps": ",".join(wanted),
                              "closed": ",".join(str(d) for d in with_drop if is_closed[d])},
                             progress=not quiet)
        except Exception as exc:
            raise StepFailed(f"backfill {with_drop[0]} .. {with_drop[-1]} stopped: {_error_summary(exc)}; "
                             f"the days before the failing one were applied; open {output} to see where") from exc
        log.info("backfill: %d day(s) done in %.1f s", len(with_drop), time.perf_counter() - t0)
    for day in earlier if wanted else ():  # record the days done, so --resume and the run records know
        if day in no_drop:
            log.info("%s: nothing to do, %s", day, no_drop[day])
        try:
            run_dir(day).mkdir(parents=True, exist_ok=True)
            state = read_state(day)
            for name in wanted:
                done = {"note": no_drop[day]} if day in no_drop else {"in": output.name}
                state["steps"][name] = {"status": "ok", "at": utc_now_text(), **done}
            _write_state(day, state)
        except (OSError, ValueError) as exc:
            cause = os_error_text(exc) if isinstance(exc, OSError) else f"{_state_path(day)}: {exc}"
            raise StepFailed(f"day {day}: done, but its record could not be written: {cause}") from exc
    return [run_day(last_day, steps=steps, resume=resume, quiet=quiet, empty_day=is_closed[last_day],
                    engine=engine)]


def _done(day, steps) -> bool:
    try:
        recorded = read_state(day)["steps"]
    except (OSError, ValueError) as exc:
        raise CannotRun(f"could not run: cannot read {_state_path(day)} for --resume ({exc})") from exc
    return all(recorded.get(name, {}).get("status") == "ok" for name in steps)
