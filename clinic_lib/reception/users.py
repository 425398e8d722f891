"""Reception's accounts: who may sign in to the screen, and whose name each call outcome keeps.

- Names are 1-32 letters, digits, ``.``, ``-`` or ``_``, starting with a letter or digit; they are
  compared case-insensitively (stored case-folded, so ``Anna`` signs in as ``anna``).
- Passwords have at least ``MIN_PASSWORD_LENGTH`` characters and are stored only as a werkzeug
  hash: scrypt, or PBKDF2-SHA256 where Python's hashlib has no scrypt.
- ``MAX_FAILED_SIGN_INS`` failed sign-ins in a row lock the name for ``LOCK_MINUTES``: counted in
  the database, so the lock holds across processes and restarts. A new password lifts it.
- Accounts are never deleted, only disabled (a disabled account's sessions end at their next
  request), so the history of calls keeps every name.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import sqlalchemy as sa
from werkzeug.security import check_password_hash, generate_password_hash

from clinic_lib.core import db
from clinic_lib.core.errors import CannotRun
from clinic_lib.core.timeutil import to_utc_text

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
MAX_FAILED_SIGN_INS = 5
LOCK_MINUTES = 15
NAME_RULE = "1-32 letters, digits, '.', '-' or '_', starting with a letter or digit"
_NAME_RE = re.compile(r"^[^\W_][\w.-]{0,31}$")
HASH_METHOD = "scrypt" if hasattr(hashlib, "scrypt") else "pbkdf2"


class AccountError(CannotRun):
    """A user command that cannot be done as asked (unknown name, duplicate, weak password)."""


@dataclass(frozen=True)
class User:
    user_id: int
    name: str
    disabled: bool
    session_epoch: int


@dataclass(frozen=True)
class SignIn:
    """What a sign-in attempt came to: ``user`` is set only when ``status == "ok"``."""
    status: str  # ok / wrong / locked / disabled
    user: User | None = None
    locked_until: dt.datetime | None = None  # UTC, when status == "locked"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def normalise_name(name: str) -> str:
    """The stored form of a user name (NFKC, case-folded), or AccountError saying the rule."""
    text = unicodedata.normalize("NFKC", str(name)).strip().casefold()
    if not _NAME_RE.match(text):
        raise AccountError(f"user name {str(name)[:40]!r}: expected {NAME_RULE}")
    return text


def check_password_rules(name: str, password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"password too short: at least {MIN_PASSWORD_LENGTH} characters "
                           f"(got {len(password)}); a phrase of a few words is easy to type")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"password too long: at most {MAX_PASSWORD_LENGTH} characters")
    if "\x00" in password:
        raise AccountError("password: no NUL characters")
    if password.strip().casefold() == name:
        raise AccountError("password: must not be the user name")


def hash_password(password: str) -> str:
    return generate_password_hash(password, method=HASH_METHOD)


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """A hash to check against when the name is unknown, so that a wrong name takes as long as a
    wrong password (the answer must not tell which names exist by its timing)."""
    return hash_password(secrets.token_urlsafe(16))


def _row(conn, name: str):
    u = db.users
    return conn.execute(sa.select(u).where(u.c.name == name)).mappings().first()


def _existing(conn, name: str):
    row = _row(conn, normalise_name(name))
    if row is None:
        raise AccountError(f"no user named {name!r} (clinic user list shows them)")
    return row


def _user(row) -> User:
    return User(int(row["user_id"]), row["name"], bool(row["disabled"]), int(row["session_epoch"]))


def add_user(engine: sa.Engine, name: str, password: str) -> User:
    name = normalise_name(name)
    check_password_rules(name, password)
    hashed = hash_password(password)  # slow on purpose: outside the write transaction
    with db.begin_write(engine) as conn:
        if _row(conn, name) is not None:
            raise AccountError(f"a user named {name!r} already exists")
        conn.execute(db.users.insert().values(name=name, password_hash=hashed, created_at=to_utc_text(_now())))
        return _user(_row(conn, name))


def require_user(engine: sa.Engine, name: str) -> User:
    """The account of ``name``, or AccountError saying there is none."""
    with engine.connect() as conn:
        return _user(_existing(conn, name))


def list_users(engine: sa.Engine) -> list[dict]:
    """Every account in name order: name, status (active / disabled / locked until ...), created, last sign-in."""
    u = db.users
    now = to_utc_text(_now())
    with engine.connect() as conn:
        rows = conn.execute(sa.select(u.c.name, u.c.disabled, u.c.locked_until, u.c.created_at,
                                      u.c.last_sign_in_at).order_by(u.c.name)).mappings().all()
    out = []
    for r in rows:
        status = "disabled" if r["disabled"] else "active"
        if r["locked_until"] and r["locked_until"] > now:
            status += f", locked until {r['locked_until']}"
        out.append({"name": r["name"], "status": status, "created_at": r["created_at"],
                    "last_sign_in_at": r["last_sign_in_at"]})
    return out


def _update(engine: sa.Engine, name: str, **values) -> User:
    u = db.users
    with db.begin_write(engine) as conn:
        row = _existing(conn, name)
        conn.execute(u.update().where(u.c.user_id == row["user_id"])
                     .values(session_epoch=u.c.session_epoch + 1, **values))
        return _user(_existing(conn, name))


def disable_user(engine: sa.Engine, name: str) -> User:
    """Disable an account; its open sessions end at their next request."""
    return _update(engine, name, disabled=1)


def enable_user(engine: sa.Engine, name: str) -> User:
    return _update(engine, name, disabled=0, failed_sign_ins=0, locked_until=None)


def reset_password(engine: sa.Engine, name: str, password: str) -> User:
    """A new password; lifts a lock and ends the account's open sessions."""
    with engine.connect() as conn:
        stored = _existing(conn, name)["name"]
    check_password_rules(stored, password)
    return _update(engine, stored, password_hash=hash_password(password), failed_sign_ins=0, locked_until=None)


def end_sessions(engine: sa.Engine, user_id: int) -> None:
    """Sign out: every session of the user ends (sessions are signed cookies; the epoch is what
    the server can take back)."""
    u = db.users
    with db.begin_write(engine) as conn:
        conn.execute(u.update().where(u.c.user_id == user_id).values(session_epoch=u.c.session_epoch + 1))


def session_user(conn, user_id: int) -> User | None:
    """The account a session belongs to, or None."""
    row = conn.execute(sa.select(db.users.c.user_id, db.users.c.name, db.users.c.disabled, db.users.c.session_epoch)
                       .where(db.users.c.user_id == user_id)).first()
    return User(int(row[0]), row[1], bool(row[2]), int(row[3])) if row else None


def session_user_raw(cursor, user_id: int, sqlite: bool) -> User | None:
    """``session_user`` on a DBAPI cursor: the screen asks on every request."""
    cursor.execute("SELECT user_id, name, disabled, session_epoch FROM users WHERE user_id = "
                   + ("?" if sqlite else "%s"), (user_id,))
    row = cursor.fetchone()
    return User(int(row[0]), row[1], bool(row[2]), int(row[3])) if row else None


def authenticate(engine: sa.Engine, name: str, password: str, now: dt.datetime | None = None) -> SignIn:
    """Check a sign-in. A wrong password counts towards the lock (one atomic UPDATE, so attempts
    from several processes add up); a success resets the count. A locked name is refused without
    looking at the password."""
    now = now or _now()
    now_text = to_utc_text(now)
    u = db.users
    try:
        key = normalise_name(name)
    except AccountError:
        key = None
    with engine.connect() as conn:
        row = _row(conn, key) if key else None
    if row is None:
        check_password_hash(_dummy_hash(), password)
        return SignIn("wrong")
    if row["locked_until"] and row["locked_until"] > now_text:
        return SignIn("locked", locked_until=dt.datetime.fromisoformat(row["locked_until"]))
    good = check_password_hash(row["password_hash"], password)  # outside any transaction: slow
    uid = row["user_id"]
    with db.begin_write(engine) as conn:
        if good:
            if row["disabled"]:
                return SignIn("disabled")
            done = conn.execute(u.update().where(
                u.c.user_id == uid, sa.or_(u.c.locked_until.is_(None), u.c.locked_until <= now_text))
                .values(failed_sign_ins=0, locked_until=None, last_sign_in_at=now_text)).rowcount
            if done:
                return SignIn("ok", user=session_user(conn, uid))
        else:
            reaches = u.c.failed_sign_ins + 1 >= MAX_FAILED_SIGN_INS
            until = sa.literal(to_utc_text(now + dt.timedelta(minutes=LOCK_MINUTES)), u.c.locked_until.type)
            conn.execute(u.update().where(u.c.user_id == uid).values(
                failed_sign_ins=sa.case((reaches, 0), else_=u.c.failed_sign_ins + 1),
                locked_until=sa.case((reaches, until), else_=u.c.locked_until)))
        locked = conn.execute(sa.select(u.c.locked_until).where(u.c.user_id == uid)).scalar()
    if locked and locked > now_text:  # locked now: by this attempt, or by another one meanwhile
        return SignIn("locked", locked_until=dt.datetime.fromisoformat(locked))
    return SignIn("wrong")
