"""The daily chain: each step a parameterized notebook executed by papermill (the one place
papermill is used).

For the end of clinic day D the chain is the table ``STEPS``, run in order::

    validate D's drop -> refresh D (then judge the scored days it closes) -> train (when the retrain
    rule asks) -> score the next clinic day -> build its list -> write its reminders -> run report

Each row of the table says which notebook runs, which day it gets (D, or the next clinic day), its
parameters, when it is not needed (a note instead of a kernel) and what runs after it; ``run_day``
is a loop over the table.

Each executed notebook is kept as the record of the run in ``outputs/runs/D/NN_step.ipynb``; a
``state.json`` beside them records which steps succeeded, so ``--resume`` can skip them. Only one
run at a time may write: a second run exits at once with a clear message (see ``RunLocked``).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from clinic_lib.core.config import PROJECT_ROOT, get_settings
from clinic_lib.core.errors import CannotRun, UserError
from clinic_lib.core.timeutil import parse_day, utc_now_text
from clinic_lib.pipeline.kernels import RunStopped

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
log = logging.getLogger("clinic.run")


@dataclass
class Evening:
    """What the steps of one run share: the day D, its database, the flags, and what one step
    learned for another (the train step's retrain decision)."""
    day: dt.date
    engine: object
    empty_day: bool = False
    no_drop: str | None = None  # why D has nothing to validate or refresh (no drop on a closed day)
    decision: object = None  # retraining.RetrainDecision, once the train step asked

    @functools.cached_property
    def day_ahead(self) -> dt.date:
        """The next clinic day after D: the day the scores, the list and the reminders are for."""
        from clinic_lib.core.clinic_days import next_clinic_day
        return next_clinic_day(self.engine, self.day)


@dataclass(frozen=True)
class Step:
    """One step of the chain: its notebook (none: done in the runner's process), which day it
    works on, its notebook's parameters, when it is not needed (a note saying why, instead of a
    kernel), what the runner does after it, and a notebook error that only means "not now"."""
    name: str
    notebook: str  # file in notebooks/, "" for a step done in the runner's process
    about: str
    day: str  # "evening": D; "ahead": the next clinic day after D
    parameters: Callable[[Evening], dict] = lambda evening: {}
    not_needed: Callable[[Evening], str | None] = lambda evening: None
    after: Callable[[Evening], None] | None = None
    tolerated: tuple[str, str] | None = None  # (exception name, note): the step ends ok, the chain goes on

    def day_of(self, evening: Evening) -> dt.date:
        return evening.day if self.day == "evening" else evening.day_ahead


def _no_drop(evening: Evening) -> str | None:
    # Nothing to check or apply: the day is recorded as done, the database is untouched.
    return evening.no_drop


def _drop_parameters(evening: Evening) -> dict:
    return {"day": evening.day.isoformat(), "allow_empty": evening.empty_day}


def _train_not_needed(evening: Evening) -> str | None:
    """No kernel for a model that is fresh and holding up (``retraining.retrain_decision``: no
    usable model, older than MODEL_MAX_AGE_DAYS, or its last 4 weeks off in calibration or AUC)."""
    from clinic_lib.modeling.retraining import retrain_decision
    evening.decision = retrain_decision(evening.day, evening.engine)
    if evening.decision.retrain:
        log.info("%s train: retraining because %s", evening.day, evening.decision.reason)
        return None
    return "model is fresh and holding up, not retrained"


def _train_parameters(evening: Evening) -> dict:
    return {"as_of": evening.day.isoformat(), "retrain_reason": str(evening.decision.reason)}


def _score_not_needed(evening: Evening) -> str | None:
    # A young clinic without enough history has no model yet: the callback list then uses the
    # heuristic risk (and says so); that is not a failure of the evening's run.
    from clinic_lib.modeling.predict import model_path
    return None if model_path().exists() else "no model yet: heuristic risk"


def _after_refresh(evening: Evening) -> None:
    """The monitoring rows of the scored days whose outcomes the refresh of D brought."""
    from clinic_lib.modeling.monitoring import update_monitoring
    try:
        update = update_monitoring(evening.day, evening.engine)
    except Exception as exc:  # the evening's list matters more than its monitoring: say so, go on
        log.warning("%s monitoring: not updated (%s); the next refresh tries again", evening.day, _error_summary(exc))
        return
    if update.recomputed or update.deleted:
        log.info("%s monitoring: %d scored day(s) judged, %d removed", evening.day, len(update.recomputed),
                 len(update.deleted))


STEPS = (
    Step("validate", "validate.ipynb", "check D's drop before anything is written", "evening", _drop_parameters,
         not_needed=_no_drop),
    Step("refresh", "refresh.ipynb", "apply D's drop to the database, then judge the scored days it closes",
         "evening", _drop_parameters, not_needed=_no_drop, after=_after_refresh),
    Step("train", "train.ipynb", "retrain the cancellation-risk model when the retrain rule asks", "evening",
         _train_parameters, not_needed=_train_not_needed,
         tolerated=("NotEnoughData", "too little history: not trained")),
    Step("score", "score.ipynb", "score the next clinic day's appointments", "ahead",
         lambda e: {"day": e.day_ahead.isoformat()}, not_needed=_score_not_needed),
    Step("priorities", "priorities.ipynb", "build the next clinic day's callback list", "ahead",
         lambda e: {"day": e.day_ahead.isoformat()}),
    Step("reminders", "reminders.ipynb", "write the next clinic day's reminder emails", "ahead",
         lambda e: {"day": e.day_ahead.isoformat(), "dry_run": False}),
    Step("report", "", "render the run report (outputs/runs/D/report.html)", "evening"),
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



def execute_notebook(notebook: Path, output: Path, parameters: dict, progress: bool = True) -> None:
    """Run one notebook with papermill (kernel python3, cwd notebooks/), keeping the executed copy.

    The kernel is a ``kernels.RunKernelManager``'s: over IPC where the platform has it, and
    stopped with the run (``kernels.stopping_kernels_on_signals``).
    """
    import papermill as pm

    from clinic_lib.pipeline.kernels import RunKernelManager
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
    from clinic_lib.core import db
    day = parse_day(day)
    engine = engine or db.make_engine()
    wants_drop = bool({"validate", "refresh"} & set(steps))
    no_drop = no_drop_reason(day, engine, empty_day) if wants_drop else None
    if wants_drop and no_drop is None and not has_drop(day):
        raise CannotRun(_missing_roster_days_message([day], range_=False))
    out_dir = run_dir(day)
    state = prepare_run_dir(day)
    result = RunResult(day)
    evening = Evening(day, engine, empty_day, no_drop)
    for index, step in enumerate(STEPS, start=1):
        if step.name not in steps:
            continue
        if resume and state["steps"].get(step.name, {}).get("status") == "ok":
            result.steps.append(StepResult(step.name, "skipped", note="succeeded before (--resume)"))
            log.info("%s %s: skipped, succeeded before", day, step.name)
            continue
        t0 = time.perf_counter()
        output = out_dir / f"{index:02d}_{step.name}.ipynb" if step.notebook else None
        try:
            log.info("%s %s: start (%s)", day, step.name, step.about)
            working_on(f"day {day}, step '{step.name}'")
            res = _run_step(step, evening, output, quiet, t0)
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
        log.info("%s %s: ok in %.1f s", day, step.name, res.seconds)
    return result


def _run_step(step: Step, evening: Evening, output: Path | None, quiet: bool, t0: float) -> StepResult:
    """One step of D's chain, as its row of STEPS says; raises what the step raised."""
    note = step.not_needed(evening)
    if note:
        log.info("%s %s: %s", evening.day, step.name, note)
        return StepResult(step.name, "ok", time.perf_counter() - t0, note=note)
    if not step.notebook:  # the report: nbconvert in this process
        from clinic_lib.pipeline.run_report import render_run_report
        return StepResult(step.name, "ok", time.perf_counter() - t0, render_run_report(run_dir(evening.day)))
    try:
        execute_notebook(NOTEBOOKS_DIR / step.notebook, output, step.parameters(evening), progress=not quiet)
    except Exception as exc:
        if step.tolerated and getattr(exc, "ename", "") == step.tolerated[0]:
            log.warning("%s %s: %s; going on", evening.day, step.name, _error_summary(exc))
            return StepResult(step.name, "ok", time.perf_counter() - t0, output, step.tolerated[1])
        raise
    if step.after:
        step.after(evening)
    note = f"retrained because {evening.decision.reason}" if evening.decision is not None and step.name == "train" else ""
    return StepResult(step.name, "ok", time.perf_counter() - t0, output, note)


def run_lock(timeout: float = 0):
    """The project-wide run lock (outputs/.run.lock): two runs never interleave their writes."""
    settings = get_settings()
    settings.outputs_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(settings.outputs_dir / ".run.lock"), timeout=timeout)


@contextlib.contextmanager
def locked(timeout: float = 0):
    """Hold the run lock for the ``with`` block (taken once, let go once at its end); a lock that
    cannot even be created is a run that could not start."""
    try:
        lock = run_lock(timeout)
        lock.acquire()
    except Timeout:  # (an OSError too: first)
        raise RunLocked("another run_daily.py is running (lock outputs/.run.lock held); "
                        "this run did nothing. Try again when it has finished, or pass "
                        "--wait SECONDS to wait for it.") from None
    except OSError as exc:
        raise CannotRun(f"could not run: cannot take the run lock, {os_error_text(exc)}") from exc
    try:
        yield lock
    finally:
        lock.release()


def default_day() -> dt.date:
    from clinic_lib.core.clinic_days import clinic_today
    return clinic_today()


def has_drop(day) -> bool:
    return get_settings().drop_dir(day).is_dir()


def no_drop_reason(day, engine, closed: bool) -> str | None:
    """Why a day without a drop folder has nothing to apply (None: it has a drop, or it should).

    A day the user says was closed (``--empty-day``, ``--closed``) or a day off the roster (no
    physio works that weekday) without an export is an empty day; a roster day is not (the
    caller says what to do).
    """
    import sqlalchemy as sa

    from clinic_lib.core.clinic_days import is_clinic_day
    if has_drop(day):
        return None
    if closed:
        return "no drop: the clinic was closed (--empty-day / --closed)"
    try:
        roster_day = is_clinic_day(engine, day)
    except sa.exc.SQLAlchemyError as exc:
        raise CannotRun(f"could not run: the database could not be read for the roster: "
                        f"{str(getattr(exc, 'orig', exc)).splitlines()[0]}") from exc
    if not roster_day:
        return f"no drop on a {parse_day(day):%A}, a day off the roster: nothing to apply"
    return None


def _missing_roster_days_message(days: list[dt.date], range_: bool = True) -> str:
    named = ", ".join(f"{d} ({d:%A})" for d in days)
    listed = ",".join(str(d) for d in days)
    folders = ", ".join(str(get_settings().drop_dir(d)) for d in days)
    closed = f"name {'it' if len(days) == 1 else 'them'}: --closed {listed}" if range_ else "run it with --empty-day"
    return (f"no drop for {named}, {'a day' if len(days) == 1 else 'days'} on the roster; nothing of the "
            f"{'range' if range_ else 'day'} was run. Put the export of {'that day' if len(days) == 1 else 'those days'} "
            f"in {folders} (re-export it from the practice software), or, if the clinic was closed, {closed}")


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
    from clinic_lib.core import db
    from clinic_lib.pipeline.backfill import days_between
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
                              "closed": ",".join(str(d) for d in with_drop if is_closed[d]),
                              "evenings": "score" in steps or "priorities" in steps},
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
