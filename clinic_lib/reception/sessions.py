"""Sessions of reception's screen: the signing secret, the cookie's settings, idle expiry, CSRF tokens.

A session is Flask's signed cookie (nothing stored on the server): the user id, the account's
session epoch at sign-in (``users.session_epoch``: sign-out, disable and a new password move it
on, which ends the session at its next request), when it was last used, and its CSRF token.

- Secret: ``CLINIC_SECRET_KEY``, else ``<CLINIC_DATA_DIR>/secret_key``, generated once (48 random
  bytes, mode 0600) and shared by every process that uses the same data folder.
- Cookie: ``clinic_session``, HttpOnly, SameSite=Lax, Secure when ``CLINIC_HTTPS=1`` (a TLS proxy
  in front) or the request itself came over HTTPS; without an expiry date (it ends with the browser).
- Idle expiry: ``CLINIC_SESSION_IDLE_MINUTES`` (default 30) without a request. The last-used time
  is rewritten at most once a minute (``refresh_seconds``), so the limit holds to the minute.
- CSRF: a random token per session in a hidden field of every form, compared in constant time.
"""
from __future__ import annotations

import datetime as dt
import hmac
import logging
import os
import secrets
import stat
import time
from pathlib import Path

from flask import Flask, has_request_context, request, session
from flask.sessions import SecureCookieSessionInterface

from clinic_lib.core.config import Settings
from clinic_lib.core.errors import CannotRun

log = logging.getLogger("clinic.web_session")

COOKIE_NAME = "clinic_session"
SECRET_FILE = "secret_key"
MIN_SECRET_LENGTH = 32
CSRF_FIELD = "csrf_token"


def secret_key(settings: Settings) -> str:
    """The key that signs session cookies: CLINIC_SECRET_KEY, or the data folder's secret file
    (made on first use; when two processes start at once, the first file written wins)."""
    if settings.secret_key:
        if len(settings.secret_key) < MIN_SECRET_LENGTH:
            raise CannotRun(f"CLINIC_SECRET_KEY is too short: at least {MIN_SECRET_LENGTH} characters "
                            "(python -c 'import secrets; print(secrets.token_urlsafe(48))' makes one)")
        return settings.secret_key
    path = Path(settings.data_dir) / SECRET_FILE
    try:
        if not path.exists():
            _write_new_secret(path)
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            os.chmod(path, 0o600)
            log.warning("%s was readable by others (mode %o): now 0600", path, mode)
        key = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CannotRun(f"cannot read or create the session secret {path}: {exc}; "
                        "set CLINIC_SECRET_KEY or make the data folder writable") from None
    if len(key) < MIN_SECRET_LENGTH:
        raise CannotRun(f"the session secret {path} is too short; delete it and a new one is made "
                        "(everyone signs in again)")
    return key


def _write_new_secret(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_urlsafe(48) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # never replaces a secret another process made meanwhile
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


class ClinicSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions; the Secure flag also follows the request's own scheme, and
    the signing serializer is made once per key instead of on every request."""

    def __init__(self):
        self._serializer = (None, None)

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"] or (has_request_context() and request.is_secure))

    def get_signing_serializer(self, app: Flask):
        keys = (app.secret_key, tuple(app.config["SECRET_KEY_FALLBACKS"] or ()))
        if self._serializer[0] != keys:
            self._serializer = (keys, super().get_signing_serializer(app))
        return self._serializer[1]


def configure(app: Flask, settings: Settings) -> None:
    app.secret_key = secret_key(settings)
    app.session_interface = ClinicSessionInterface()
    idle = settings.session_idle_minutes * 60
    if idle <= 0:
        raise CannotRun(f"CLINIC_SESSION_IDLE_MINUTES must be more than 0, got {settings.session_idle_minutes}")
    app.config.update(SESSION_COOKIE_NAME=COOKIE_NAME, SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_SECURE=bool(settings.https),
                      PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=12),
                      CLINIC_SESSION_IDLE_SECONDS=idle)


def idle_seconds(app: Flask) -> float:
    return app.config["CLINIC_SESSION_IDLE_SECONDS"]


def refresh_seconds(app: Flask) -> float:
    """How stale the session's last-used time may get before it is rewritten (a new cookie)."""
    return min(60.0, idle_seconds(app) / 30)


def begin(user_id: int, session_epoch: int) -> None:
    """A new signed-in session (a new CSRF token too)."""
    session.clear()
    session.update(uid=user_id, epoch=session_epoch, seen=time.time(), csrf=secrets.token_urlsafe(32))
    session.permanent = False


def csrf_token() -> str:
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def csrf_ok(value) -> bool:
    token = session.get("csrf")
    return bool(token) and isinstance(value, str) and hmac.compare_digest(value.encode(), token.encode())
