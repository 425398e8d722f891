"""When were the data, the checks and the model last updated: the dashboard's freshness panel."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from clinic_lib.core.config import get_settings
from clinic_lib.core.timeutil import read_instants, today_local
from clinic_lib.dashboard.kpis import _connect

# --- freshness: when were the data, the checks and the model last updated -----------------------

def _latest(conn, table: str, order: str, where: str = "") -> dict | None:
    row = conn.execute(sa.text(f"SELECT * FROM {table} {where} ORDER BY {order} DESC LIMIT 1")).mappings().first()
    return dict(row) if row else None


def _age_days(instant, today: dt.date, tz) -> int | None:
    if instant is None:
        return None
    ts = read_instants(pd.Series([instant])).iloc[0]
    return (today - ts.tz_convert(tz).date()).days


def freshness(bind, settings=None) -> dict:
    """Latest refresh or load of the data (etl_runs), latest validation (validation_runs) and the
    current model (model_runs, and outputs/model/metrics.json when present), each with its age in
    days."""
    settings = settings or get_settings()
    today = today_local(settings.clinic_tz)
    out: dict = {"etl": None, "etl_ok": None, "validation": None, "model": None, "metrics": None}
    with _connect(bind) as conn:
        # the data's refresh: other jobs (the callback list, reminders) log in etl_runs too
        data_jobs = "job IN ('refresh', 'load', 'import-noshow')"
        out["etl"] = _latest(conn, "etl_runs", "run_id", f"WHERE {data_jobs}")
        out["etl_ok"] = _latest(conn, "etl_runs", "run_id", f"WHERE {data_jobs} AND status = 'ok'")
        out["validation"] = _latest(conn, "validation_runs", "run_id")
        out["model"] = _latest(conn, "model_runs", "run_id")
    for key, col in (("etl", "finished_at"), ("etl_ok", "finished_at"), ("validation", "finished_at"),
                     ("model", "trained_at")):
        if out[key] is not None:
            out[key]["age_days"] = _age_days(out[key].get(col) or out[key].get("started_at"), today,
                                             settings.clinic_tz)
    path = Path(settings.model_dir) / "metrics.json"
    if path.exists():
        try:
            out["metrics"] = json.loads(path.read_text())
            out["metrics_path"] = str(path)
        except (OSError, ValueError) as exc:
            out["metrics"] = {"error": f"unreadable {path.name}: {exc}"}
    return out
