"""The report of a validation: its checks' results with examples, and the record of a run (etl_runs)."""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from clinic_lib.core import db
from clinic_lib.core.errors import CannotRun, UserError
from clinic_lib.core.timeutil import ISO_FORMAT, utc_now_text
from clinic_lib.validation.checks import DROP, ERROR, for_scope

MAX_EXAMPLES = 10


class ValidationFailed(UserError):
    """Raised (by ``Report.raise_for_errors``) when a run found errors: the chain must stop here."""


@dataclass
class CheckResult:
    id: str
    severity: str
    meaning: str
    count: int = 0
    examples: list = field(default_factory=list)

    def add(self, examples: list[dict], count: int | None = None) -> None:
        self.count += len(examples) if count is None else int(count)
        room = MAX_EXAMPLES - len(self.examples)
        if room > 0:
            self.examples.extend(_plain(e) for e in examples[:room])


def _plain(example: dict) -> dict:
    out = {}
    for k, v in example.items():
        if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA or v is pd.NaT:
            out[k] = None
        elif isinstance(v, (np.integer,)):
            out[k] = int(v)
        elif isinstance(v, (np.floating,)):
            out[k] = float(v)
        elif isinstance(v, (dt.datetime, pd.Timestamp)):
            out[k] = v.astimezone(dt.timezone.utc).strftime(ISO_FORMAT) if v.tzinfo else v.isoformat()
        elif isinstance(v, dt.date):
            out[k] = v.isoformat()
        elif isinstance(v, (int, float, str, bool)):
            out[k] = v
        else:
            out[k] = str(v)
    return out


class Report:
    """What one validation run found: every check of its scope, failed or not."""

    def __init__(self, scope: str, day: dt.date | None = None, source: str = ""):
        self.scope, self.day, self.source = scope, day, source
        self.checks = {d.id: CheckResult(d.id, d.severity, d.meaning) for d in for_scope(scope)}
        self.notes: list[str] = []
        self.started_at = utc_now_text()
        self.finished_at: str | None = None
        self.seconds: float | None = None
        self.report_path: Path | None = None

    def add(self, check_id: str, examples: list[dict], count: int | None = None) -> None:
        self.checks[check_id].add(examples, count)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks.values() if c.count]

    @property
    def errors(self) -> list[CheckResult]:
        return [c for c in self.failed if c.severity == ERROR]

    @property
    def warnings(self) -> list[CheckResult]:
        return [c for c in self.failed if c.severity != ERROR]

    @property
    def status(self) -> str:
        return "errors" if self.errors else "warnings" if self.warnings else "ok"

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self) -> None:
        """Raise ValidationFailed with the summary if any error-severity check failed."""
        if self.errors:
            raise ValidationFailed(self.summary_text())

    def summary_text(self, examples: int = 3) -> str:
        what = f"drop {self.day}" if self.scope == DROP else "database"
        n_err = sum(c.count for c in self.errors)
        n_warn = sum(c.count for c in self.warnings)
        head = (f"validation of {what}: {self.status.upper()} - {n_err} error row(s) in {len(self.errors)} "
                f"check(s), {n_warn} warning row(s) in {len(self.warnings)} check(s)")
        lines = [head]
        for c in self.errors + self.warnings:
            lines.append(f"  {c.severity:7} {c.id}: {c.count} row(s) - {c.meaning}")
            for e in c.examples[:examples]:
                lines.append("           " + _describe(e))
        if self.report_path:
            lines.append(f"  report: {self.report_path}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "scope": self.scope, "day": self.day.isoformat() if self.day else None, "source": self.source,
            "status": self.status, "exit_code": self.exit_code,
            "started_at": self.started_at, "finished_at": self.finished_at, "seconds": self.seconds,
            "n_errors": sum(c.count for c in self.errors), "n_warnings": sum(c.count for c in self.warnings),
            "failed": [c.id for c in self.failed], "notes": self.notes,
            "checks": [{"id": c.id, "severity": c.severity, "count": c.count, "meaning": c.meaning,
                        "examples": c.examples} for c in self.checks.values()],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, default=str)

    def checks_frame(self) -> pd.DataFrame:
        """One row per check (failed first), for a notebook table."""
        rows = [{"check": c.id, "severity": c.severity, "rows": c.count,
                 "result": ("FAILED" if c.severity == ERROR else "warn") if c.count else "ok",
                 "meaning": c.meaning} for c in self.checks.values()]
        frame = pd.DataFrame(rows)
        if frame.empty:
            return frame
        order = frame["result"].map({"FAILED": 0, "warn": 1, "ok": 2})
        return frame.assign(_o=order).sort_values(["_o"], kind="stable").drop(columns="_o").reset_index(drop=True)

    def examples_frame(self) -> pd.DataFrame:
        """The example rows of every failed check, one row each."""
        rows = [{"check": c.id, "severity": c.severity, **e} for c in self.failed for e in c.examples]
        return pd.DataFrame(rows)


def _describe(example: dict) -> str:
    parts = []
    if "file" in example:
        parts.append(str(example["file"]) + (f" line {example['line']}" if example.get("line") is not None else "")
                     + (f" column {example['column']}" if example.get("column") else ""))
    # a value is cut short (it may be anything); a problem is our own sentence, said in full
    parts += [f"{k}={str(v)[:300 if k == 'problem' else 60]!r}" if isinstance(v, str) else f"{k}={v}"
              for k, v in example.items() if k not in ("file", "line", "column")]
    return ", ".join(parts)


def _finish(report: Report, engine, t0: float, record: bool, path: Path) -> Report:
    report.finished_at = utc_now_text()
    report.seconds = round(time.perf_counter() - t0, 4)
    if record:
        path.parent.mkdir(parents=True, exist_ok=True)
        report.report_path = path
        tmp = path.with_suffix(".tmp")
        tmp.write_text(report.to_json(), encoding="utf-8")
        tmp.replace(path)
        _log_run(engine, report, report.status)
    return report


def _log_run(engine, report: Report, status: str, summary: str | None = None) -> None:
    with db.begin_write(engine) as conn:
        conn.execute(db.validation_runs.insert().values(
            scope=report.scope, day=report.day.isoformat() if report.day else None,
            started_at=report.started_at, finished_at=utc_now_text(), status=status,
            n_errors=sum(c.count for c in report.errors), n_warnings=sum(c.count for c in report.warnings),
            report_path=str(report.report_path) if report.report_path else None,
            summary=(summary or report.summary_text())[:4000]))


@contextlib.contextmanager
def _could_not_run(engine, report: "Report", record: bool):
    """A run that cannot start is logged (validation_runs, status failed) and raised as CannotRun."""
    try:
        yield
    except CannotRun as exc:
        if record:
            _record_failure(engine, report, str(exc))
        raise
    except sa.exc.OperationalError as exc:
        raise CannotRun(f"the database could not be read: {str(exc.orig).splitlines()[0]}") from exc


def _record_failure(engine, report: Report, message: str) -> None:
    """Log a run that could not happen, if the database can take the row (never raises)."""
    try:
        with engine.connect() as conn:
            if "validation_runs" not in sa.inspect(conn).get_table_names():
                return
        _log_run(engine, report, "failed", summary=message)
    except Exception:  # noqa: BLE001 - the original CannotRun is what the caller must see
        pass
