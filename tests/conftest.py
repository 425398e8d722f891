"""Shared fixtures: real databases (a SQLite file per test, a fresh Postgres database per test).

Postgres: the server named by CLINIC_TEST_PG_URL (default postgresql://postgres@127.0.0.1:5432/test,
the one every developer machine and CI run has). Each test gets its own database, created and
dropped here. Without a reachable server the Postgres variants skip, saying how to enable them.
"""
from __future__ import annotations

import os
import uuid

import pytest
import sqlalchemy as sa

from clinic_lib.core import db
from clinic_lib.core.migrate import migrate

PG_ADMIN_URL = os.environ.get("CLINIC_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
PG_SKIP_REASON = (
    "PostgreSQL not reachable at CLINIC_TEST_PG_URL ({}); start it with "
    "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` or point "
    "CLINIC_TEST_PG_URL at a server where the user may CREATE DATABASE"
)


def _pg_admin_engine():
    from clinic_lib.core.config import normalise_database_url
    return sa.create_engine(normalise_database_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")


def _pg_available() -> bool:
    if os.environ.get("CI") and not os.environ.get("CLINIC_ALLOW_PG_SKIP"):
        return True  # in CI, Postgres must run: a connection error fails loudly instead of skipping
    try:
        with _pg_admin_engine().connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_available():
    return _pg_available()


@pytest.fixture
def pg_url(pg_available):
    """URL of a brand-new Postgres database, dropped after the test."""
    if not pg_available:
        pytest.skip(PG_SKIP_REASON.format(PG_ADMIN_URL))
    name = "clinic_test_" + uuid.uuid4().hex[:12]
    admin = _pg_admin_engine()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    base = admin.url.set(database=name).render_as_string(hide_password=False)
    yield base
    sa.pool.clear_managers() if hasattr(sa.pool, "clear_managers") else None
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'clinic.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    """Each test using this runs twice: on a SQLite file and on a fresh Postgres database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'clinic.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def engine(db_url):
    """A migrated, empty database of the current schema (SQLite and Postgres)."""
    e = db.make_engine(db_url)
    migrate(e)
    yield e
    e.dispose()


@pytest.fixture
def clinic_env(tmp_path, monkeypatch, db_url):
    """A private project environment: data/outputs under tmp_path, DATABASE_URL set."""
    data, outputs = tmp_path / "data", tmp_path / "outputs"
    data.mkdir(exist_ok=True)
    outputs.mkdir(exist_ok=True)
    monkeypatch.setenv("CLINIC_DATA_DIR", str(data))
    monkeypatch.setenv("CLINIC_OUTPUTS_DIR", str(outputs))
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("CLINIC_TZ", "Europe/Berlin")
    return tmp_path


@pytest.fixture
def project_env(tmp_path, monkeypatch):
    """A migrated SQLite project for run_daily.py tests: data/outputs under tmp_path, set in the environment."""
    data, outputs = tmp_path / "data", tmp_path / "outputs"
    url = f"sqlite:///{tmp_path / 'clinic.db'}"
    for key, value in {"CLINIC_DATA_DIR": str(data), "CLINIC_OUTPUTS_DIR": str(outputs),
                       "DATABASE_URL": url, "CLINIC_TZ": "Europe/Berlin"}.items():
        monkeypatch.setenv(key, value)
    engine = db.make_engine(url)
    migrate(engine)
    yield tmp_path
    engine.dispose()
