"""Reminder emails for clinic day D: one RFC 5322 message per appointment still booked on D whose
patient agreed to reminders (``reminder_consent = 1``) and has an email address.

- Messages are built from a template the clinic can edit (``clinic_lib/templates/reminder.txt``,
  or the file named by env ``REMINDER_TEMPLATE``): a ``Subject:`` line, a blank line, the body;
  placeholders ``$clinic_name $clinic_phone $patient_name $first_name $date $time $physio
  $appointment_id``.
- Each message is written atomically (temporary file + rename) to ``EMAIL_OUTBOX_DIR/D/`` and
  recorded in the ``reminders`` ledger in the same transaction, so a second run sends nothing new
  (unless ``resend=True``), and a failed run leaves neither files nor ledger rows.
- When ``EMAIL_SMTP_URL`` is set (``smtp://host:port``, ``smtps://``, optional ``user:password@``,
  ``?starttls=1``), the ledger's messages of D not yet delivered are then sent by SMTP and marked
  ``smtp_delivered = 1``; a failed delivery is retried by the next run.
- ``dry_run=True`` builds the same messages and lists them without writing anything.
- Appointments whose patient has no consent or no (valid) address are listed, not emailed.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import smtplib
import string
import tempfile
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import format_datetime, formataddr, make_msgid
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pandas as pd
import sqlalchemy as sa

from clinic_lib.core import db
from clinic_lib.core.config import Settings, get_settings
from clinic_lib.core.errors import CannotRun
from clinic_lib.core.migrate import ensure_schema
from clinic_lib.core.timeutil import parse_day, read_instants, utc_now_text
from clinic_lib.reception.priorities import day_param

DEFAULT_TEMPLATE = Path(__file__).resolve().parents[1] / "templates" / "reminder.txt"
PLACEHOLDERS = ("clinic_name", "clinic_phone", "patient_name", "first_name", "date", "time", "physio",
                "appointment_id")
EMAIL_RE = re.compile(r"^[^@\s<>,;:\"()\[\]\\]+@[^@\s<>,;:\"()\[\]\\]+\.[A-Za-z]{2,}$")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")


class TemplateError(CannotRun):
    """The reminder template cannot be used (says which file and what is wrong)."""


class DeliveryError(CannotRun):
    """SMTP delivery failed; the messages stay in the outbox and the next run retries them."""


@dataclass
class Template:
    path: Path
    subject: string.Template
    body: string.Template

    def render(self, values: dict) -> tuple[str, str]:
        return self.subject.substitute(values).strip(), self.body.substitute(values)


def template_path() -> Path:
    """The template in use: env REMINDER_TEMPLATE (relative = to the project root) or the default."""
    from clinic_lib.core.config import get_settings
    return get_settings().reminder_template or DEFAULT_TEMPLATE


def load_template(path: Path | None = None) -> Template:
    """Read and check the template: a Subject line, a blank line, a body; only known placeholders."""
    path = Path(path) if path else template_path()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"reminder template {path}: cannot read it ({exc})") from None
    head, sep, body = text.replace("\r\n", "\n").partition("\n\n")
    if not sep or not head.startswith("Subject:") or "\n" in head.strip():
        raise TemplateError(f"reminder template {path}: expected a first line 'Subject: ...', "
                            "then an empty line, then the body")
    t = Template(path, string.Template(head[len("Subject:"):]), string.Template(body))
    sample = {k: "x" for k in PLACEHOLDERS}
    for part in (t.subject, t.body):
        try:
            part.substitute(sample)
        except KeyError as exc:
            raise TemplateError(f"reminder template {path}: unknown placeholder ${exc.args[0]}; "
                                f"known: {', '.join('$' + k for k in PLACEHOLDERS)}") from None
        except ValueError as exc:
            raise TemplateError(f"reminder template {path}: {exc} (write $$ for a dollar sign)") from None
    return t


@dataclass
class ReminderResult:
    day: dt.date
    dry_run: bool
    messages: list[dict] = field(default_factory=list)  # written (or, in a dry run, previewed) now
    already_sent: list[dict] = field(default_factory=list)  # in the ledger before: not sent again
    not_emailed: list[dict] = field(default_factory=list)  # no consent / no valid address
    smtp_delivered: int = 0
    outbox: Path | None = None

    def tables(self) -> dict[str, pd.DataFrame]:
        cols = ["appointment_id", "patient_name", "to", "subject", "file"]
        return {"messages": pd.DataFrame(self.messages, columns=cols + ["status"]),
                "already_sent": pd.DataFrame(self.already_sent, columns=["appointment_id", "patient_name", "to",
                                                                         "sent_at"]),
                "not_emailed": pd.DataFrame(self.not_emailed, columns=["appointment_id", "patient_name", "phone",
                                                                       "reason"])}

    def summary(self) -> str:
        verb = "would write" if self.dry_run else "wrote"
        text = (f"reminders for {self.day}: {verb} {len(self.messages)} message(s), "
                f"{len(self.already_sent)} already sent, {len(self.not_emailed)} not emailed")
        if self.smtp_delivered:
            text += f", {self.smtp_delivered} delivered by SMTP"
        return text


def _clean(value) -> str:
    """Text safe for a header or a line: no control characters (no header injection)."""
    return re.sub(r"[\x00-\x1f\x7f]+", " ", "" if value is None or pd.isna(value) else str(value)).strip()


def _long_date(d: dt.date) -> str:
    return f"{WEEKDAYS[d.weekday()]}, {d.day} {MONTHS[d.month - 1]} {d.year}"


def _day_appointments(conn, day: dt.date) -> pd.DataFrame:
    a, p, ph = db.appointments, db.patients, db.physios
    query = (sa.select(a.c.appointment_id, a.c.patient_id, a.c.appt_start, p.c.first_name, p.c.last_name,
                       p.c.phone, p.c.email, p.c.reminder_consent, ph.c.full_name.label("physio_name"))
             .select_from(a.join(p, p.c.patient_id == a.c.patient_id)
                          .outerjoin(ph, ph.c.physio_id == a.c.physio_id))
             .where(a.c.local_date == day_param(conn, day), a.c.status == "booked")
             .order_by(a.c.appt_start, a.c.appointment_id))
    return pd.DataFrame(conn.execute(query).mappings().all(),
                        columns=["appointment_id", "patient_id", "appt_start", "first_name", "last_name", "phone",
                                 "email", "reminder_consent", "physio_name"])


def _ledger(conn, appointment_ids) -> dict[int, list[dict]]:
    r = db.reminders
    out: dict[int, list[dict]] = {}
    ids = [int(i) for i in appointment_ids]
    for i in range(0, len(ids), 900):
        for row in conn.execute(sa.select(r).where(r.c.appointment_id.in_(ids[i:i + 900]))
                                .order_by(r.c.reminder_id)).mappings():
            out.setdefault(int(row["appointment_id"]), []).append(dict(row))
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o640)  # mkstemp makes 0600 files; the clinic's mail tools may run as its group
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_message(settings: Settings, template: Template, row, day: dt.date) -> EmailMessage:
    local = row.appt_start_local
    patient = _clean(f"{row.first_name or ''} {row.last_name or ''}")
    values = {"clinic_name": _clean(settings.clinic_name), "clinic_phone": _clean(settings.clinic_phone),
              "patient_name": patient, "first_name": _clean(row.first_name), "date": _long_date(day),
              "time": local.strftime("%H:%M"), "physio": _clean(row.physio_name) or "your physiotherapist",
              "appointment_id": str(int(row.appointment_id))}
    subject, body = template.render(values)
    msg = EmailMessage()
    domain = settings.email_from.rpartition("@")[2] or "clinic.example"
    msg["Message-ID"] = make_msgid(idstring=f"appointment-{int(row.appointment_id)}", domain=domain)
    msg["Date"] = format_datetime(dt.datetime.now(settings.clinic_tz))
    msg["From"] = formataddr((_clean(settings.clinic_name), settings.email_from))
    msg["To"] = formataddr((patient, _clean(row.email)))
    msg["Subject"] = _clean(subject)
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Clinic-Appointment-Id"] = str(int(row.appointment_id))
    msg.set_content(body)
    return msg


def smtp_connect(url: str, timeout: float = 30.0) -> smtplib.SMTP:
    """An open, logged-in SMTP connection for ``EMAIL_SMTP_URL``."""
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise CannotRun(f"EMAIL_SMTP_URL: expected smtp://host:port or smtps://host:port, got {url!r}")
    query = parse_qs(parts.query)
    port = parts.port or (465 if parts.scheme == "smtps" else 25)
    cls = smtplib.SMTP_SSL if parts.scheme == "smtps" else smtplib.SMTP
    smtp = cls(parts.hostname, port, timeout=timeout)
    try:
        if query.get("starttls", ["0"])[0] in ("1", "true", "yes"):
            smtp.starttls()
        if parts.username:
            smtp.login(unquote(parts.username), unquote(parts.password or ""))
    except BaseException:
        smtp.close()
        raise
    return smtp


def _deliver_pending(engine, settings: Settings, appointment_ids) -> int:
    """SMTP-deliver the ledger's messages for these appointments that are not delivered yet.

    Each accepted message is marked delivered at once, so a failure half-way keeps what was sent.
    """
    r = db.reminders
    with engine.connect() as conn:
        pending = [dict(x) for x in conn.execute(
            sa.select(r.c.reminder_id, r.c.file_path).where(
                r.c.appointment_id.in_([int(i) for i in appointment_ids]), r.c.smtp_delivered == 0)
            .order_by(r.c.reminder_id)).mappings()]
    pending = [row for row in pending if row["file_path"] and Path(row["file_path"]).is_file()]
    if not pending:
        return 0
    delivered = 0
    try:
        with smtp_connect(settings.email_smtp_url) as smtp:
            for row in pending:
                msg = BytesParser(policy=policy.default).parsebytes(Path(row["file_path"]).read_bytes())
                smtp.send_message(msg)
                with db.begin_write(engine) as conn:
                    conn.execute(r.update().where(r.c.reminder_id == row["reminder_id"]).values(smtp_delivered=1))
                delivered += 1
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(f"SMTP delivery to {urlsplit(settings.email_smtp_url).hostname} failed after "
                            f"{delivered} of {len(pending)} message(s): {exc}; the messages are in the outbox "
                            "and the next run retries them") from None
    return delivered


def send_reminders(day, engine: sa.Engine | None = None, settings: Settings | None = None,
                   dry_run: bool = False, resend: bool = False, template: Path | None = None) -> ReminderResult:
    """Write (and, with EMAIL_SMTP_URL, deliver) the reminders of clinic day ``day``."""
    from clinic_lib.ingest.refresh import log_etl_run
    settings = settings or get_settings()
    day = parse_day(day)
    tmpl = load_template(template)
    engine = engine or db.make_engine(settings.database_url)
    ensure_schema(engine)
    outbox = settings.email_outbox_dir / day.isoformat()
    result = ReminderResult(day, bool(dry_run), outbox=outbox)
    started = utc_now_text()
    written: list[Path] = []
    try:
        with (engine.connect() if dry_run else db.begin_write(engine)) as conn:
            if not dry_run and not db.is_sqlite(conn):
                # Two runs at once must not both send: serialise writers (SQLite: BEGIN IMMEDIATE does).
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(5150501)")
            frame = _day_appointments(conn, day)
            frame["appt_start_local"] = read_instants(frame["appt_start"]).dt.tz_convert(settings.clinic_tz)
            ledger = _ledger(conn, frame["appointment_id"]) if len(frame) else {}
            now = utc_now_text()
            rows = []
            for row in frame.itertuples(index=False):
                aid = int(row.appointment_id)
                name = _clean(f"{row.first_name or ''} {row.last_name or ''}")
                email = _clean(row.email)
                reason = None
                if int(row.reminder_consent) != 1:
                    reason = "no consent to reminders"
                elif not email:
                    reason = "no email address"
                elif not EMAIL_RE.match(email):
                    reason = f"email address looks invalid ({email[:60]})"
                if reason:
                    result.not_emailed.append({"appointment_id": aid, "patient_name": name,
                                               "phone": _clean(row.phone) or None, "reason": reason})
                    continue
                previous = ledger.get(aid, [])
                if previous and not resend:
                    result.already_sent.append({"appointment_id": aid, "patient_name": name, "to": email,
                                                "sent_at": str(previous[-1]["sent_at"])})
                    continue
                msg = build_message(settings, tmpl, row, day)
                n = len(previous)
                path = outbox / (f"appointment_{aid}.eml" if n == 0 else f"appointment_{aid}_{n + 1}.eml")
                entry = {"appointment_id": aid, "patient_name": name, "to": email, "subject": msg["Subject"],
                         "file": str(path), "message_id": msg["Message-ID"], "body": msg.get_content(),
                         "status": "preview" if dry_run else "written"}
                result.messages.append(entry)
                if dry_run:
                    continue
                _write_atomic(path, msg.as_bytes(policy=policy.SMTP))
                written.append(path)
                rows.append({"appointment_id": aid, "email": email, "message_id": msg["Message-ID"],
                             "file_path": str(path), "smtp_delivered": 0, "sent_at": now})
            if rows:
                conn.execute(db.reminders.insert(), rows)
    except BaseException as exc:
        for path in written:  # the ledger rolled back: take the files back too
            path.unlink(missing_ok=True)
        if not dry_run and isinstance(exc, Exception):
            log_etl_run(engine, "reminders", day, started, "failed", 0, 0, f"{type(exc).__name__}: {exc}")
        raise
    if dry_run:
        return result
    if settings.email_smtp_url and len(frame):
        try:
            result.smtp_delivered = _deliver_pending(engine, settings, frame["appointment_id"])
        except DeliveryError as exc:
            log_etl_run(engine, "reminders", day, started, "failed", len(frame), len(written), str(exc))
            raise
        for m in result.messages:
            m["status"] = "delivered"
    log_etl_run(engine, "reminders", day, started, "ok", len(frame), len(written))
    return result
