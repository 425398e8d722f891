"""Reminders: .eml files, the idempotent ledger, dry runs, and delivery to a real SMTP server."""
from __future__ import annotations

import socket
from email import policy
from email.parser import BytesParser
from email.utils import parsedate_to_datetime

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from clinic_lib.core import db
from clinic_lib.reception.reminders import DeliveryError, TemplateError, send_reminders

from reception_data import DAY, load_clinic


def _ledger(engine):
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(db.reminders).order_by(db.reminders.c.reminder_id)).mappings()]


def _eml(path):
    return BytesParser(policy=policy.default).parsebytes(open(path, "rb").read())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Collect:
    def __init__(self):
        self.envelopes = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 OK"


@pytest.fixture
def smtp_server():
    handler = Collect()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port())
    controller.start()
    yield handler, f"smtp://127.0.0.1:{controller.port}"
    controller.stop()


def test_written_once_and_listed(engine, clinic_env, monkeypatch):
    monkeypatch.setenv("CLINIC_NAME", "Physio Mitte")
    monkeypatch.setenv("CLINIC_PHONE", "+49 30 5550100")
    load_clinic(engine)
    r = send_reminders(DAY, engine=engine)
    # 101 Alice and 102 Bob consented and have an address; 103 has no address, 104 no consent, 105 canceled
    assert [m["appointment_id"] for m in r.messages] == [101, 102]
    assert {(x["appointment_id"], x["reason"]) for x in r.not_emailed} == {
        (103, "no email address"), (104, "no consent to reminders")}
    outbox = clinic_env / "outputs" / "outbox" / "2026-03-30"
    assert sorted(p.name for p in outbox.iterdir()) == ["appointment_101.eml", "appointment_102.eml"]
    msg = _eml(outbox / "appointment_101.eml")
    for header in ("Message-ID", "Date", "From", "To", "Subject"):
        assert msg[header], header
    assert msg["To"] == "Alice Adler <alice@example.org>"
    assert msg["From"] == "Physio Mitte <reception@clinic.example>"
    assert msg["Subject"] == "Reminder: your appointment on Monday, 30 March 2026 at 09:00"
    assert parsedate_to_datetime(msg["Date"]).tzinfo is not None
    body = msg.get_content()
    assert "Dear Alice Adler" in body and "Anna Berg" in body and "+49 30 5550100" in body
    assert "Physio Mitte" in body and "cancel" in body
    assert _eml(outbox / "appointment_102.eml")["Subject"].endswith("at 11:00")  # 09:00Z = 11:00 CEST

    ledger = _ledger(engine)
    assert [(x["appointment_id"], x["email"], x["smtp_delivered"]) for x in ledger] == [
        (101, "alice@example.org", 0), (102, "bob@example.org", 0)]
    assert ledger[0]["message_id"] == msg["Message-ID"].strip()

    again = send_reminders(DAY, engine=engine)
    assert again.messages == [] and [x["appointment_id"] for x in again.already_sent] == [101, 102]
    assert len(_ledger(engine)) == 2 and len(list(outbox.iterdir())) == 2

    resent = send_reminders(DAY, engine=engine, resend=True)
    assert [m["file"].rsplit("/", 1)[1] for m in resent.messages] == ["appointment_101_2.eml", "appointment_102_2.eml"]
    assert len(_ledger(engine)) == 4
    assert not list(outbox.glob(".*"))  # no temporary files left behind


def test_dry_run_writes_nothing(engine, clinic_env):
    load_clinic(engine)
    r = send_reminders(DAY, engine=engine, dry_run=True)
    assert [m["status"] for m in r.messages] == ["preview", "preview"]
    assert "Dear Bob Brandt" in r.messages[1]["body"]
    assert "would write 2 message(s)" in r.summary()
    assert not (clinic_env / "outputs" / "outbox").exists()
    assert _ledger(engine) == []
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(db.etl_runs)).scalar() == 0


def test_smtp_delivery_to_real_server(engine, clinic_env, monkeypatch, smtp_server):
    handler, url = smtp_server
    load_clinic(engine)
    # the server is down first: files and ledger are written, delivery fails and is retried later
    monkeypatch.setenv("EMAIL_SMTP_URL", f"smtp://127.0.0.1:{_free_port()}")
    with pytest.raises(DeliveryError, match="next run retries"):
        send_reminders(DAY, engine=engine)
    assert [x["smtp_delivered"] for x in _ledger(engine)] == [0, 0]

    monkeypatch.setenv("EMAIL_SMTP_URL", url)
    r = send_reminders(DAY, engine=engine)
    assert r.messages == [] and r.smtp_delivered == 2
    assert sorted(e.rcpt_tos[0] for e in handler.envelopes) == ["alice@example.org", "bob@example.org"]
    got = BytesParser(policy=policy.default).parsebytes(handler.envelopes[0].content)
    assert got["Message-ID"].strip() == _ledger(engine)[0]["message_id"]
    assert [x["smtp_delivered"] for x in _ledger(engine)] == [1, 1]

    # nothing new, nothing delivered twice
    assert send_reminders(DAY, engine=engine).smtp_delivered == 0
    assert len(handler.envelopes) == 2


def test_template_override_and_bad_template(engine, clinic_env, monkeypatch, tmp_path):
    load_clinic(engine)
    custom = tmp_path / "mine.txt"
    custom.write_text("Subject: See you $date\n\nHi $first_name, $time with $physio. Cost: $$60\n")
    monkeypatch.setenv("REMINDER_TEMPLATE", str(custom))
    r = send_reminders(DAY, engine=engine, dry_run=True)
    assert r.messages[0]["subject"] == "See you Monday, 30 March 2026"
    assert r.messages[0]["body"] == "Hi Alice, 09:00 with Anna Berg. Cost: $60\n"

    custom.write_text("Subject: Hello $nickname\n\nbody\n")
    with pytest.raises(TemplateError, match=r"unknown placeholder \$nickname"):
        send_reminders(DAY, engine=engine)
    custom.write_text("no subject line here\n")
    with pytest.raises(TemplateError, match="Subject"):
        send_reminders(DAY, engine=engine)
    assert _ledger(engine) == []


def test_header_injection_and_invalid_address(engine, clinic_env):
    load_clinic(engine)
    with db.begin_write(engine) as conn:
        conn.execute(db.patients.update().where(db.patients.c.patient_id == 1)
                     .values(first_name="Alice\r\nBcc: evil@attacker.example"))
        conn.execute(db.patients.update().where(db.patients.c.patient_id == 2).values(email="bob at example"))
    r = send_reminders(DAY, engine=engine)
    assert [m["appointment_id"] for m in r.messages] == [101]
    assert any(x["appointment_id"] == 102 and "invalid" in x["reason"] for x in r.not_emailed)
    msg = _eml(r.messages[0]["file"])
    assert msg["Bcc"] is None and "\n" not in msg["To"]


def test_cli_and_notebook(tmp_path, monkeypatch, sqlite_url, capsys):
    import papermill as pm

    from clinic_lib.cli import main
    from clinic_lib.core.config import PROJECT_ROOT
    from clinic_lib.core.migrate import migrate
    monkeypatch.setenv("CLINIC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CLINIC_OUTPUTS_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    e = db.make_engine(sqlite_url)
    migrate(e)
    load_clinic(e)
    assert main(["reminders", "--day", "2026-03-30", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would write 2 message(s)" in out and "not emailed: appointment 103 Carla Czerny" in out
    assert _ledger(e) == []
    nb = PROJECT_ROOT / "notebooks" / "reminders.ipynb"
    pm.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), parameters={"day": "2026-03-30", "dry_run": False},
                        cwd=str(PROJECT_ROOT / "notebooks"), progress_bar=False, kernel_name="python3")
    assert len(_ledger(e)) == 2
    assert main(["reminders", "--day", "2026-03-30"]) == 0
    assert "wrote 0 message(s), 2 already sent" in capsys.readouterr().out
    e.dispose()


def test_two_runs_at_once_send_once(engine, clinic_env):
    import threading
    load_clinic(engine)
    barrier = threading.Barrier(2)
    results, errors = [], []

    def run():
        barrier.wait()
        try:
            results.append(send_reminders(DAY, engine=engine))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(len(r.messages) for r in results) == [0, 2]
    assert [x["appointment_id"] for x in _ledger(engine)] == [101, 102]


def test_the_call_holdout_does_not_touch_reminders(engine, clinic_env, monkeypatch):
    """Held-out appointments (101 and 103 at share 0.5 under this secret) get their reminders."""
    from clinic_lib.reception.priorities import build_priorities
    load_clinic(engine)
    monkeypatch.setenv("CLINIC_HOLDOUT_SECRET", "test-secret")
    monkeypatch.setenv("CALL_HOLDOUT_SHARE", "0.5")
    marks = dict(zip(*(build_priorities(DAY, engine=engine).frame[c] for c in ("appointment_id", "holdout"))))
    assert marks == {101: 1, 102: 0, 103: 1, 104: 0}
    r = send_reminders(DAY, engine=engine)
    assert [m["appointment_id"] for m in r.messages] == [101, 102]
    assert {(x["appointment_id"], x["reason"]) for x in r.not_emailed} == {
        (103, "no email address"), (104, "no consent to reminders")}
