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

import datetime as dt
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from clinic_lib.core.config import PROJECT_ROOT, get_settings
from clinic_lib.core.errors import CannotRun, UserError
from clinic_lib.core.timeutil import parse_day, utc_now_text

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
    from clinic_lib.core.clinic_days import next_clinic_day
    target = next_clinic_day(engine, day)
    if step == "reminders":
        return {"day": target.isoformat(), "dry_run": False}
    return {"day": target.isoformat()}


def _model_exists() -> bool:
    from clinic_lib.modeling.predict import model_path
    return model_path().exists()


def _retrain_decision(day: dt.date, engine):
    """Whether the evening of ``day`` retrains, and why (``retraining.retrain_decision``): no usable
    model, older than MODEL_MAX_AGE_DAYS, or its last 4 weeks off in calibration or ROC AUC."""
    from clinic_lib.modeling.retraining import retrain_decision
    return retrain_decision(day, engine)


def _after_refresh(day: dt.date, engine) -> None:
    """The monitoring rows of the scored days whose outcomes the refresh of ``day`` brought."""
    from clinic_lib.modeling.monitoring import update_monitoring
    try:
        update = update_monitoring(day, engine)
    except Exception as exc:  # the evening's list matters more than its monitoring: say so, go on
        log.warning("%s monitoring: not updated (%s); the next refresh tries again", day, _error_summary(exc))
        return
    if update.recomputed or update.deleted:
        log.info("%s monitoring: %d scored day(s) judged, %d removed", day, len(update.recomputed),
                 len(update.deleted))


def execute_notebook(notebook: Path, output: Path, parameters: dict, progress: bool = True) -> None:
    """Run one notebook with papermill (kernel python3, cwd notebooks/), keeping the executed copy."""
    import papermill as pm
    output.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name="python3",
                        cwd=str(notebook.parent), progress_bar=progress, log_output=False,
                        request_save_on_cell_execute=False)


def _error_summary(exc: Exception) -> str:
    name = getattr(exc, "ename", type(exc).__name__)
    value = getattr(exc, "evalue", str(exc))
    return f"{name}: {value}".strip()


def run_day(day, steps: tuple[str, ...] = STEP_NAMES, resume: bool = False, quiet: bool = False,
            empty_day: bool = False, engine=None) -> RunResult:
    """Run the chain for clinic day ``day``; stops at the first failing step (raises StepFailed)."""
    from clinic_lib.core import db
    day = parse_day(day)
    engine = engine or db.make_engine()
    out_dir = run_dir(day)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = read_state(day)
    result = RunResult(day)
    for index, step in enumerate(STEPS, start=1):
        if step.name not in steps:
            continue
        if resume and state["steps"].get(step.name, {}).get("status") == "ok":
            result.steps.append(StepResult(step.name, "skipped", note="succeeded before (--resume)"))
            log.info("%s %s: skipped, succeeded before", day, step.name)
            continue
        t0 = time.perf_counter()
        log.info("%s %s: start (%s)", day, step.name, step.about)
        if step.name == "report":
            from clinic_lib.pipeline.run_report import render_run_report
            path = render_run_report(out_dir)
            res = StepResult(step.name, "ok", time.perf_counter() - t0, path)
        elif step.name == "train" and not (decision := _retrain_decision(day, engine)).retrain:
            # No kernel start for a model that is fresh and holding up: the step is done by not being needed.
            res = StepResult(step.name, "ok", time.perf_counter() - t0, note="model is fresh and holding up, not retrained")
            log.info("%s train: the model is younger than MODEL_MAX_AGE_DAYS and its last 4 weeks are within "
                     "the retrain thresholds: not retrained", day)
        elif step.name == "score" and not _model_exists():
            # A young clinic without enough history has no model yet: the callback list then uses
            # the heuristic risk (and says so); that is not a failure of the evening's run.
            res = StepResult(step.name, "ok", time.perf_counter() - t0, note="no model yet: heuristic risk")
            log.warning("%s score: no model yet (too little history to train): the callback list "
                        "uses the heuristic risk", day)
        else:
            output = out_dir / f"{index:02d}_{step.name}.ipynb"
            try:
                params = step_parameters(step.name, day, engine, empty_day)
                if step.name == "train":
                    params["retrain_reason"] = str(decision.reason)
                    log.info("%s train: retraining because %s", day, decision.reason)
                execute_notebook(NOTEBOOKS_DIR / step.notebook, output, params, progress=not quiet)
            except Exception as exc:  # papermill's error carries the notebook's exception
                seconds = time.perf_counter() - t0
                if step.name == "train" and getattr(exc, "ename", "") == "NotEnoughData":
                    log.warning("%s train: %s; going on without a model", day, _error_summary(exc))
                    state["steps"][step.name] = {"status": "ok", "at": utc_now_text(),
                                                 "note": "too little history: not trained"}
                    _write_state(day, state)
                    result.steps.append(StepResult(step.name, "ok", seconds, output, "too little history"))
                    continue
                state["steps"][step.name] = {"status": "failed", "at": utc_now_text(),
                                             "error": _error_summary(exc)}
                _write_state(day, state)
                result.steps.append(StepResult(step.name, "failed", seconds, output, _error_summary(exc)))
                where = f"; open {output} to see where" if output.exists() else ""
                raise StepFailed(f"day {day}, step '{step.name}' failed: {_error_summary(exc)}{where}") from exc
            res = StepResult(step.name, "ok", time.perf_counter() - t0, output,
                             note=f"retrained because {decision.reason}" if step.name == "train" else "")
            if step.name == "refresh":
                _after_refresh(day, engine)
        state["steps"][step.name] = {"status": "ok", "at": utc_now_text(), "seconds": round(res.seconds, 2)}
        if res.note:
            state["steps"][step.name]["note"] = res.note
        _write_state(day, state)
        result.steps.append(res)
        log.info("%s %s: ok in %.1f s", day, step.name, res.seconds)
    return result


def run_lock(timeout: float = 0):
    """The project-wide run lock (outputs/.run.lock): two runs never interleave their writes."""
    settings = get_settings()
    settings.outputs_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(settings.outputs_dir / ".run.lock"), timeout=timeout)


def locked(timeout: float = 0):
    lock = run_lock(timeout)
    try:
        lock.acquire()
    except Timeout:
        raise RunLocked("another run_daily.py is running (lock outputs/.run.lock held); "
                        "this run did nothing. Try again when it has finished, or pass "
                        "--wait SECONDS to wait for it.") from None
    return lock


def default_day() -> dt.date:
    from clinic_lib.core.clinic_days import clinic_today
    return clinic_today()


def run_range(first, last, steps: tuple[str, ...] = STEP_NAMES, resume: bool = False,
              quiet: bool = False) -> list[RunResult]:
    """Backfill the days from ``first`` to ``last`` in order; stops at the first bad day.

    The days before the last are validated and refreshed in one notebook (one kernel for the range,
    ``notebooks/backfill.ipynb``); the last day then runs the requested steps. Scores, callback lists
    and reminders are for the day ahead, so the days before the last get none.
    """
    from clinic_lib.pipeline.backfill import days_between
    days = days_between(first, last)
    earlier, last_day = days[:-1], days[-1]
    if resume:
        earlier = [d for d in earlier if not _refreshed(d)]
    if earlier and {"validate", "refresh"} & set(steps):
        t0 = time.perf_counter()
        output = run_dir(last_day) / f"00_backfill_{earlier[0]}_{earlier[-1]}.ipynb"
        log.info("%s .. %s backfill: validate and refresh %d day(s) in one kernel", earlier[0], earlier[-1], len(earlier))
        try:
            execute_notebook(NOTEBOOKS_DIR / "backfill.ipynb", output,
                             {"date_from": earlier[0].isoformat(), "date_to": earlier[-1].isoformat(),
                              "evenings": "score" in steps or "priorities" in steps},
                             progress=not quiet)
        except Exception as exc:
            raise StepFailed(f"backfill {earlier[0]} .. {earlier[-1]} stopped: {_error_summary(exc)}; "
                             f"the days before the failing one were applied; open {output} to see where") from exc
        for day in earlier:  # record the days done, so --resume and the run records know
            state = read_state(day)
            run_dir(day).mkdir(parents=True, exist_ok=True)
            for name in ("validate", "refresh"):
                state["steps"][name] = {"status": "ok", "at": utc_now_text(), "in": output.name}
            _write_state(day, state)
        log.info("backfill: %d day(s) applied in %.1f s", len(earlier), time.perf_counter() - t0)
    return [run_day(last_day, steps=steps, resume=resume, quiet=quiet)]


def _refreshed(day) -> bool:
    return read_state(day)["steps"].get("refresh", {}).get("status") == "ok"
