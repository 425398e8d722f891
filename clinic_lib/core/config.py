"""Every setting and every path of Clinic Ops, in one place.

Paths are built from the project root (the folder holding ``pyproject.toml``), never from the
working directory, so ``run_daily.py``, the notebooks (which papermill runs from ``notebooks/``) and
the tests all see the same files. Values come from the environment, then from ``.env`` at the
project root (python-dotenv; the environment wins), then from the defaults below.

Settings are read afresh on each ``get_settings()`` call so a test or a notebook parameter can
change the environment and see the change.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

from dotenv import dotenv_values

from clinic_lib.core.errors import CannotRun

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    """The environment over the project's ``.env`` file (the environment wins)."""
    values = {k: v for k, v in dotenv_values(PROJECT_ROOT / ".env").items() if v is not None}
    values.update(os.environ)
    return values


def _path(value: str | None, default: Path) -> Path:
    if not value:
        return default
    p = Path(value).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p


def normalise_database_url(url: str) -> str:
    """Accept the URLs people paste: ``postgres://`` and ``postgresql://`` become psycopg 3 URLs."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        # A relative SQLite path means relative to the project root, not the working directory.
        rel = url[len("sqlite:///"):]
        if rel and rel != ":memory:":
            url = "sqlite:///" + str(_path(rel, PROJECT_ROOT / rel))
    return url


@dataclass(frozen=True)
class Settings:
    database_url: str
    clinic_tz: ZoneInfo
    data_dir: Path
    outputs_dir: Path
    clinic_name: str = "Clinic Ops Physiotherapy"
    # Cancellation-risk model
    late_cancel_hours: float = 24.0
    call_capacity: int = 10
    model_max_age_days: int = 7
    risk_thresholds: tuple[float, float] = (0.10, 0.25)  # low < t0 <= medium < t1 <= high
    # Reception
    api_token: str | None = None
    api_host: str = "127.0.0.1"
    api_port: int = 8008
    email_outbox_dir: Path = field(default_factory=Path)
    email_smtp_url: str | None = None
    email_from: str = "reception@clinic.example"
    clinic_phone: str = "+49 30 000000"
    reminder_template: Path | None = None  # None: clinic_lib/templates/reminder.txt
    priority_weights: dict = field(default_factory=dict)
    # Validation gate
    payment_max_factor: float = 3.0  # more paid than this times the price is flagged (a warning)
    phone_region: str = "DE"  # region for phone numbers written without +country
    # Dashboard (docs/dashboard.md): each visitor's page has its own kernel (~200 MB)
    dashboard_port: int = 8866
    dashboard_max_visitors: int = 4  # visitors' kernels at once; one more gets a "busy" page
    dashboard_idle_minutes: float = 10.0  # a visitor's kernel ends after this long without use
    dashboard_cell_timeout: float = 120.0  # seconds a page's own work may take once a visitor came
    # Reception's screen: sign-in sessions
    secret_key: str | None = None  # None: generated once into <data_dir>/secret_key
    session_idle_minutes: float = 30.0
    https: bool = False  # a TLS proxy in front: session cookies are Secure, remote clients are served
    # The model in practice and the call holdout (see docs/monitoring.md, docs/call-effect.md)
    call_holdout_share: float = 0.0  # share of each evening's list held out from calls (0 = off)
    holdout_secret: str | None = None  # CLINIC_HOLDOUT_SECRET; None: holdout.py keeps one in data_dir
    retrain_calibration_gap: float = 0.05
    retrain_auc_drop: float = 0.05
    retrain_min_scored: int = 1000

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"

    @property
    def daily_dir(self) -> Path:
        return self.data_dir / "daily"

    def drop_dir(self, day) -> Path:
        return self.daily_dir / str(day)

    @property
    def runs_dir(self) -> Path:
        return self.outputs_dir / "runs"

    @property
    def model_dir(self) -> Path:
        return self.outputs_dir / "model"

    @property
    def scores_dir(self) -> Path:
        return self.outputs_dir / "scores"

    @property
    def priorities_dir(self) -> Path:
        return self.outputs_dir / "priorities"

    @property
    def validation_dir(self) -> Path:
        return self.outputs_dir / "validation"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


class ConfigError(CannotRun):
    """A setting with a value the clinic cannot run with; the message names the setting."""


MAX_CALL_HOLDOUT_SHARE = 0.5  # more would leave reception with less than half of its list


def _number(env: dict, name: str, default: float, low: float, high: float, meaning: str) -> float:
    """A float setting in [low, high]; anything else is a ConfigError naming it."""
    raw = env.get(name)
    if raw is None or str(raw).strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # also refuses nan
        raise ConfigError(f"{name}={raw!r}: expected {meaning}, a number from {low:g} to {high:g}")
    return value


DEFAULT_PRIORITY_WEIGHTS = {
    "risk": 1.0,  # times the calibrated risk (0..1)
    "new_patient": 0.15,
    "missing_phone": 0.10,
    "missing_consent": 0.10,
    "early_slot": 0.05,  # appointments before 10:00 local: less time to react in the morning
}


def get_settings() -> Settings:
    env = _env()
    data_dir = _path(env.get("CLINIC_DATA_DIR"), PROJECT_ROOT / "data")
    outputs_dir = _path(env.get("CLINIC_OUTPUTS_DIR"), PROJECT_ROOT / "outputs")
    default_db = "sqlite:///" + str(data_dir / "clinic.db")
    thresholds = env.get("RISK_BUCKET_THRESHOLDS", "0.10,0.25")
    low, high = (float(x) for x in thresholds.split(","))
    weights = dict(DEFAULT_PRIORITY_WEIGHTS)
    for key in weights:
        value = env.get(f"PRIORITY_WEIGHT_{key.upper()}")
        if value:
            weights[key] = float(value)
    return Settings(
        database_url=normalise_database_url(env.get("DATABASE_URL") or default_db),
        clinic_tz=ZoneInfo(env.get("CLINIC_TZ") or "Europe/Berlin"),
        data_dir=data_dir,
        outputs_dir=outputs_dir,
        clinic_name=env.get("CLINIC_NAME") or "Clinic Ops Physiotherapy",
        late_cancel_hours=float(env.get("LATE_CANCEL_HOURS") or 24),
        call_capacity=int(env.get("CALL_CAPACITY") or 10),
        model_max_age_days=int(env.get("MODEL_MAX_AGE_DAYS") or 7),
        risk_thresholds=(low, high),
        api_token=env.get("CLINIC_API_TOKEN") or None,
        api_host=env.get("CLINIC_API_HOST") or "127.0.0.1",
        api_port=int(env.get("CLINIC_API_PORT") or 8008),
        email_outbox_dir=_path(env.get("EMAIL_OUTBOX_DIR"), outputs_dir / "outbox"),
        email_smtp_url=env.get("EMAIL_SMTP_URL") or None,
        email_from=env.get("EMAIL_FROM") or "reception@clinic.example",
        clinic_phone=env.get("CLINIC_PHONE") or "+49 30 000000",
        reminder_template=_path(env.get("REMINDER_TEMPLATE"), None) if env.get("REMINDER_TEMPLATE") else None,
        priority_weights=weights,
        payment_max_factor=float(env.get("PAYMENT_MAX_FACTOR") or 3),
        phone_region=(env.get("PHONE_REGION") or "DE").upper(),
        dashboard_port=int(env.get("CLINIC_DASHBOARD_PORT") or 8866),
        dashboard_max_visitors=int(_number(env, "CLINIC_DASHBOARD_MAX_VISITORS", 4, 1, 1000,
                                           "the dashboard's visitors at once (one kernel each)")),
        dashboard_idle_minutes=_number(env, "CLINIC_DASHBOARD_IDLE_MINUTES", 10.0, 0.1, 24 * 60,
                                       "the minutes without use after which a visitor's kernel ends"),
        dashboard_cell_timeout=_number(env, "CLINIC_DASHBOARD_CELL_TIMEOUT", 120.0, 5, 3600,
                                       "the seconds a page's own work may take"),
        secret_key=env.get("CLINIC_SECRET_KEY") or None,
        session_idle_minutes=float(env.get("CLINIC_SESSION_IDLE_MINUTES") or 30),
        https=(env.get("CLINIC_HTTPS") or "0").strip().lower() in ("1", "true", "yes", "on"),
        call_holdout_share=_number(env, "CALL_HOLDOUT_SHARE", 0.0, 0.0, MAX_CALL_HOLDOUT_SHARE,
                                   "the share of each evening's list held out from calls (0 = off)"),
        holdout_secret=env.get("CLINIC_HOLDOUT_SECRET") or None,
        retrain_calibration_gap=_number(env, "RETRAIN_CALIBRATION_GAP", 0.05, 0.0, 1.0,
                                        "the calibration gap that triggers a retrain"),
        retrain_auc_drop=_number(env, "RETRAIN_AUC_DROP", 0.05, 0.0, 1.0,
                                 "the drop in ROC AUC below the holdout estimate that triggers a retrain"),
        retrain_min_scored=int(_number(env, "RETRAIN_MIN_SCORED", 1000, 0, 10**9,
                                       "the scored appointments with an outcome a retrain on evidence needs")),
    )
