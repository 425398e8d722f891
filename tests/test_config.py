"""Configuration: paths from the project root whatever the working directory; URLs people paste."""
from __future__ import annotations

import os
import subprocess
import sys

from clinic_lib.core import config
from clinic_lib.core.config import PROJECT_ROOT, get_settings, normalise_database_url


def test_defaults_are_under_the_project_root(monkeypatch, tmp_path):
    for key in ("DATABASE_URL", "CLINIC_DATA_DIR", "CLINIC_OUTPUTS_DIR", "CLINIC_TZ"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(config, "PROJECT_ROOT", tmp_path)  # no .env there
    monkeypatch.chdir("/")
    s = get_settings()
    assert s.database_url == f"sqlite:///{tmp_path / 'data' / 'clinic.db'}"
    assert s.outputs_dir == tmp_path / "outputs"
    assert str(s.clinic_tz) == "Europe/Berlin"


def test_paths_do_not_depend_on_working_directory(tmp_path):
    code = "from clinic_lib.core.config import get_settings; s = get_settings(); print(s.database_url); print(s.outputs_dir)"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CLINIC_DATA_DIR", "CLINIC_OUTPUTS_DIR")}
    outs = {subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True).stdout
            for cwd in ("/", str(tmp_path), str(PROJECT_ROOT / "notebooks"))}
    assert len(outs) == 1
    url, outputs = outs.pop().split()
    assert url == f"sqlite:///{PROJECT_ROOT / 'data' / 'clinic.db'}"
    assert outputs == str(PROJECT_ROOT / "outputs")


def test_dotenv_is_read_and_environment_wins(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text("CLINIC_TZ=America/Sao_Paulo\nCALL_CAPACITY=7\n")
    monkeypatch.setattr(config, "PROJECT_ROOT", tmp_path)
    monkeypatch.delenv("CLINIC_TZ", raising=False)
    monkeypatch.delenv("CALL_CAPACITY", raising=False)
    assert str(get_settings().clinic_tz) == "America/Sao_Paulo"
    assert get_settings().call_capacity == 7
    monkeypatch.setenv("CALL_CAPACITY", "12")
    assert get_settings().call_capacity == 12


def test_database_urls_people_paste():
    assert normalise_database_url("postgres://u:p@h:5432/db") == "postgresql+psycopg://u:p@h:5432/db"
    assert normalise_database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_database_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_database_url("sqlite:///data/x.db") == f"sqlite:///{PROJECT_ROOT / 'data' / 'x.db'}"
    assert normalise_database_url("sqlite:////abs/x.db") == "sqlite:////abs/x.db"


def test_relative_folders_are_relative_to_project_root(monkeypatch):
    monkeypatch.setenv("CLINIC_OUTPUTS_DIR", "elsewhere/out")
    assert get_settings().outputs_dir == PROJECT_ROOT / "elsewhere" / "out"


def test_call_holdout_share_is_checked_when_settings_are_read(monkeypatch):
    import pytest

    from clinic_lib.core.config import ConfigError
    monkeypatch.delenv("CALL_HOLDOUT_SHARE", raising=False)
    assert get_settings().call_holdout_share == 0.0  # off by default
    for good, expected in (("0", 0.0), ("0.2", 0.2), ("0.5", 0.5), (" ", 0.0)):
        monkeypatch.setenv("CALL_HOLDOUT_SHARE", good)
        assert get_settings().call_holdout_share == expected
    for bad in ("0.6", "-0.1", "20%", "nan", "1"):
        monkeypatch.setenv("CALL_HOLDOUT_SHARE", bad)
        with pytest.raises(ConfigError) as info:
            get_settings()
        assert str(info.value) == (f"CALL_HOLDOUT_SHARE={bad!r}: expected the share of each evening's list "
                                   "held out from calls (0 = off), a number from 0 to 0.5")


def test_retrain_thresholds_have_documented_defaults(monkeypatch):
    for key in ("RETRAIN_CALIBRATION_GAP", "RETRAIN_AUC_DROP", "RETRAIN_MIN_SCORED"):
        monkeypatch.delenv(key, raising=False)
    s = get_settings()
    assert (s.retrain_calibration_gap, s.retrain_auc_drop, s.retrain_min_scored) == (0.05, 0.05, 1000)
    monkeypatch.setenv("RETRAIN_AUC_DROP", "0.03")
    monkeypatch.setenv("RETRAIN_MIN_SCORED", "200")
    s = get_settings()
    assert (s.retrain_auc_drop, s.retrain_min_scored) == (0.03, 200)


def test_a_bad_holdout_share_stops_run_daily_at_start_up(tmp_path):
    env = {**os.environ, "CALL_HOLDOUT_SHARE": "0.7", "DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}",
           "CLINIC_OUTPUTS_DIR": str(tmp_path / "outputs"), "CLINIC_DATA_DIR": str(tmp_path / "data")}
    out = subprocess.run([sys.executable, str(PROJECT_ROOT / "run_daily.py"), "--day", "2026-11-24"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().endswith("CALL_HOLDOUT_SHARE='0.7': expected the share of each evening's list held "
                                       "out from calls (0 = off), a number from 0 to 0.5")
    assert not (tmp_path / "outputs" / "runs").exists() and not (tmp_path / "c.db").exists()
