"""Reception's accounts (clinic_lib/reception/users.py) and `clinic user` on real databases: names,
password rules and hashes, the sign-in lock counted in the database (across processes), and the
command's messages and exit codes."""
from __future__ import annotations

import io
import subprocess
import sys

import pytest
import sqlalchemy as sa

from clinic_lib.cli import main
from clinic_lib.core import db
from clinic_lib.reception import users
from clinic_lib.reception.users import AccountError

GOOD = "a long enough password"


def stored(engine, name):
    with engine.connect() as conn:
        return conn.execute(sa.select(db.users).where(db.users.c.name == name)).mappings().one()


def test_accounts_names_and_hashes(engine):
    anna = users.add_user(engine, " Anna ", GOOD)
    assert anna.name == "anna" and not anna.disabled
    row = stored(engine, "anna")
    assert row["password_hash"].startswith(("scrypt:", "pbkdf2:")) and GOOD not in row["password_hash"]
    assert row["created_at"] and row["last_sign_in_at"] is None and row["failed_sign_ins"] == 0
    with pytest.raises(AccountError, match="a user named 'anna' already exists"):
        users.add_user(engine, "ANNA", GOOD)
    for bad in ("", "bad name", "x" * 33, "_anna", "anna;drop", "a/b"):
        with pytest.raises(AccountError, match="expected 1-32 letters, digits"):
            users.add_user(engine, bad, GOOD)
    assert users.add_user(engine, "jörg.m-2", GOOD).name == "jörg.m-2"
    with pytest.raises(AccountError, match="password too short: at least 12 characters \\(got 11\\)"):
        users.add_user(engine, "ben", "x" * 11)
    with pytest.raises(AccountError, match="must not be the user name"):
        users.add_user(engine, "benjamin.long", "Benjamin.Long")
    assert [u["name"] for u in users.list_users(engine)] == ["anna", "jörg.m-2"]
    for action in (users.disable_user, users.enable_user, users.require_user):
        with pytest.raises(AccountError, match="no user named 'nobody'"):
            action(engine, "nobody")
    with pytest.raises(AccountError, match="no user named 'nobody'"):
        users.reset_password(engine, "nobody", GOOD)


def test_sign_in_lock(engine):
    users.add_user(engine, "anna", GOOD)
    assert users.authenticate(engine, "anna", GOOD).status == "ok"
    assert stored(engine, "anna")["last_sign_in_at"] is not None
    assert users.authenticate(engine, "nobody", GOOD).status == "wrong"
    for n in range(1, 5):
        assert users.authenticate(engine, "anna", "wrong").status == "wrong"
        assert stored(engine, "anna")["failed_sign_ins"] == n
    fifth = users.authenticate(engine, "anna", "wrong")
    assert fifth.status == "locked" and fifth.locked_until is not None
    assert users.authenticate(engine, "anna", GOOD).status == "locked"
    assert "locked until" in users.list_users(engine)[0]["status"]
    users.disable_user(engine, "anna")
    users.enable_user(engine, "anna")  # enabling lifts the lock too
    assert users.authenticate(engine, "anna", GOOD).status == "ok"


def test_the_lock_is_counted_across_processes(engine, db_url):
    """Three wrong passwords here, two in another process: the name is locked in both."""
    users.add_user(engine, "anna", GOOD)
    for _ in range(3):
        users.authenticate(engine, "anna", "wrong")
    code = ("import sys; from clinic_lib.core import db; from clinic_lib.reception import users; e = db.make_engine(sys.argv[1]); "
            "print(*[users.authenticate(e, 'anna', 'wrong').status for _ in range(2)])")
    out = subprocess.run([sys.executable, "-c", code, db_url], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["wrong", "locked"]
    assert users.authenticate(engine, "anna", GOOD).status == "locked"


def test_disable_and_new_password_end_sessions(engine):
    anna = users.add_user(engine, "anna", GOOD)
    disabled = users.disable_user(engine, "anna")
    assert disabled.disabled and disabled.session_epoch == anna.session_epoch + 1
    assert users.authenticate(engine, "anna", GOOD).status == "disabled"
    users.enable_user(engine, "anna")
    renewed = users.reset_password(engine, "anna", "another long password")
    assert renewed.session_epoch > disabled.session_epoch
    assert users.authenticate(engine, "anna", GOOD).status == "wrong"
    assert users.authenticate(engine, "anna", "another long password").status == "ok"


@pytest.fixture
def cli_env(clinic_env, engine):
    return engine


def run(argv, monkeypatch, stdin=None, passwords=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    if passwords is not None:
        answers = iter(passwords)
        monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    return main(argv)


def test_clinic_user_command(cli_env, monkeypatch, capsys):
    engine = cli_env
    assert run(["user", "list"], monkeypatch) == 0
    assert "no accounts yet" in capsys.readouterr().out
    assert run(["user", "add", "Anna"], monkeypatch, passwords=[GOOD, GOOD]) == 0
    assert "added anna: sign in at http://127.0.0.1:8008/" in capsys.readouterr().out
    assert run(["user", "add", "ben", "--password-stdin"], monkeypatch, stdin=GOOD + "\n") == 0
    capsys.readouterr()
    # the clear errors, exit 2, nothing changed
    cases = [(["user", "add", "anna", "--password-stdin"], GOOD + "\n", None, "a user named 'anna' already exists"),
             (["user", "add", "carl", "--password-stdin"], "short\n", None, "password too short"),
             (["user", "add", "carl"], None, [GOOD, GOOD + "!"], "the two passwords differ"),
             (["user", "add", "carl", "--password-stdin"], "", None, "standard input is empty"),
             (["user", "add", "bad name"], None, None, "expected 1-32 letters"),
             (["user", "disable", "nobody"], None, None, "no user named 'nobody'"),
             (["user", "reset-password", "nobody"], None, None, "no user named 'nobody'"),
             (["user", "reset-password", "anna", "--password-stdin"], "anna\n", None, "password too short")]
    for argv, stdin, passwords, message in cases:
        assert run(argv, monkeypatch, stdin=stdin, passwords=passwords) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("clinic user: ") and message in err, (argv, err)
    assert [u["name"] for u in users.list_users(engine)] == ["anna", "ben"]
    assert run(["user", "disable", "BEN"], monkeypatch) == 0
    assert "disabled ben" in capsys.readouterr().out
    assert run(["user", "list"], monkeypatch) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split()[:2] == ["anna", "active"] and listing[1].split()[:2] == ["ben", "disabled"]
    assert "last sign-in never" in listing[0]
    assert run(["user", "reset-password", "anna"], monkeypatch, passwords=["a new long password"] * 2) == 0
    assert users.authenticate(engine, "anna", "a new long password").status == "ok"
    assert run(["user", "enable", "ben"], monkeypatch) == 0
    assert users.authenticate(engine, "ben", GOOD).status == "ok"


def test_clinic_user_in_a_shell(clinic_env, engine, db_url):
    """The installed command with the password on standard input (what a setup script does)."""
    out = subprocess.run([sys.executable, "-m", "clinic_lib", "user", "add", "dora", "--password-stdin"],
                         input=GOOD + "\n", capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "added dora" in out.stdout, out.stderr
    out = subprocess.run([sys.executable, "-m", "clinic_lib", "user", "add", "dora", "--password-stdin"],
                         input=GOOD + "\n", capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "a user named 'dora' already exists" in out.stderr
