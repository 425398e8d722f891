"""Reception's screen: the evening call list as web pages, with sign-in (a Flask blueprint).

Pages (server-rendered from ``templates/reception/``; one small script enhances the forms):

- ``GET /`` (``?day=YYYY-MM-DD``, default the next clinic day; ``&show=open``: only the
  appointments not called yet): the list, the day's progress, a form per row to record a call.
- ``POST /days/<day>/appointments/<id>/calls``: record an outcome. A plain form post answers
  303 back to the row (``/?day=D#appt-<id>``); the script posts with ``X-Clinic-Fragment: 1`` and
  gets the row's new HTML (and every other row someone changed meanwhile) to put in place.
- ``GET /days/<day>/appointments/<id>/calls``: the row's call history.
- ``GET /print?day=D``: the list on A4 with empty outcome boxes.
- ``GET|POST /sign-in``, ``POST /sign-out``.

Every page needs a signed-in session (``web_session``) except sign-in; every form carries the
session's CSRF token. The Bearer token of the JSON API plays no part here. Pages are served only
to this machine (loopback) unless ``CLINIC_HTTPS=1`` says a TLS proxy serves them.

The rendered list of a day is kept in the API's list cache (``api.ListCache``): it is reused
while the database provably has not changed, as the API's JSON is; per request only the
session's CSRF token and the user's name are put into it.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import time
from functools import lru_cache, wraps
from pathlib import Path

import jinja2.ext
import sqlalchemy as sa
from flask import Blueprint, Flask, Response, current_app, g, redirect, render_template, request, session, url_for
from markupsafe import Markup, escape
from werkzeug.exceptions import HTTPException

from clinic_lib.core import db
from clinic_lib.core.clinic_days import working_weekdays
from clinic_lib.core.config import Settings
from clinic_lib.core.timeutil import BadDate, parse_day, today_local
from clinic_lib.reception import call_list, users
from clinic_lib.reception import sessions as web_session
from clinic_lib.reception.call_list import BadInput

log = logging.getLogger("clinic.reception")

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # clinic_lib/: templates/ and static/
bp = Blueprint("reception", __name__, template_folder=str(PACKAGE_DIR / "templates"),
               static_folder=str(PACKAGE_DIR / "static" / "reception"),
               static_url_path="/static/reception")

FRAGMENT_HEADER = "X-Clinic-Fragment"
MAX_FORM_BYTES = 64 * 1024  # a 2,000-character note percent-encoded, with room to spare
FAR_AHEAD_DAYS = 366
EARLIEST_DAY = dt.date(1900, 1, 1)
SHOW = ("all", "open")
# Stands for the session's CSRF token in a cached page; escaped data can never contain it.
CSRF_SLOT = "<csrf-slot>"
USER_SLOT = "<user-slot>"  # and the signed-in user's name
_SLOTS_RE = re.compile(f"({CSRF_SLOT}|{USER_SLOT})")
_ID_RE = re.compile(r"^[0-9]{1,18}$")
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


class Screen:
    """What the screen's requests share: settings, the engine, the API's list cache, rendered rows."""

    def __init__(self, app: Flask, settings: Settings, engine: sa.Engine, cache):
        self.app, self.settings, self.engine, self.cache = app, settings, engine, cache
        self.tz = settings.clinic_tz
        self.smtp = bool(settings.email_smtp_url)
        # A row's HTML depends only on its data (call_list.Row) and the values below, so it is
        # memoised: a page renders again only the rows whose data changed (with the CSRF slot).
        self.row_html = lru_cache(maxsize=4096)(self._row_html)

    def _row_html(self, row: call_list.Row, day: dt.date, show: str, calls_prefix: str) -> Markup:
        template = self.app.jinja_env.get_template("reception/_row.html")
        return Markup(template.render(row=row, day=day, show=show, calls_prefix=calls_prefix,
                                      capacity=self.settings.call_capacity, csrf=Markup(CSRF_SLOT),
                                      outcomes=call_list.OUTCOME_LABELS))

    def rows_renderer(self, day: dt.date, show: str):
        """``row -> HTML`` for the rows of ``day`` (CSRF slot unfilled)."""
        prefix = url_for("reception.history_page", day=day.isoformat(), appointment_id="0")[:-len("0/calls")]
        return lambda row: self.row_html(row, day, show, prefix)


class _LeanHtml(jinja2.ext.Extension):
    """Drops the indentation of the screen's template sources: a list of 100 rows is a third smaller."""

    def preprocess(self, source, name, filename=None):
        return re.sub(r"\n[ \t]+", "\n", source) if name and name.startswith("reception/") else source


def register(app: Flask, settings: Settings, engine: sa.Engine) -> None:
    """Add the screen to the API's app (``api.create_app`` calls this)."""
    web_session.configure(app, settings)
    app.jinja_env.add_extension(_LeanHtml)
    app.extensions["clinic_screen"] = Screen(app, settings, engine, app.extensions.get("clinic_list_cache"))
    app.register_blueprint(bp)


def _screen() -> Screen:
    return current_app.extensions["clinic_screen"]


def _fragment_wanted() -> bool:
    return request.headers.get(FRAGMENT_HEADER) == "1"


# --- the database's generation: cached pages and accounts ----------------------------------------

def _generation():
    """The list cache's generation for this request (checked once), or None without a cache."""
    if "generation" not in g:
        g.generation = None
        if _screen().cache is not None:
            with _raw_read() as (conn, cursor):
                g.generation = _screen().cache.check(conn, cursor)
    return g.generation


class _raw_read:
    """A pooled DBAPI connection and cursor for a few small reads (on Postgres in autocommit, as
    the API's list: no BEGIN and ROLLBACK round trips), given back as the pool expects it."""

    def __enter__(self):
        from clinic_lib.reception.api import _back_to_the_pool
        self.sqlite = db.is_sqlite(_screen().engine)
        self.back = _back_to_the_pool
        self.conn = _screen().engine.raw_connection()
        if not self.sqlite:
            self.conn.driver_connection.autocommit = True
        self.cursor = self.conn.cursor()
        return self.conn, self.cursor

    def __exit__(self, *exc):
        self.cursor.close()
        self.back(self.conn, self.sqlite)


def _cached(key, build):
    cache, generation = _screen().cache, _generation()
    if cache is not None:
        value = cache.get(key, generation)
        if value is not None:
            return value
    value = build()
    if cache is not None:
        cache.put(key, generation, value)
    return value


def _account(user_id: int) -> users.User | None:
    """The session's account as the database has it now: every request of the screen asks, on
    the connection that checks the cache's generation (one checkout)."""
    screen, key = _screen(), ("screen-user", user_id)
    with _raw_read() as (conn, cursor):
        if screen.cache is not None:
            g.generation = screen.cache.check(conn, cursor)
            user = screen.cache.get(key, g.generation)
            if user is not None:
                return user or None
        user = users.session_user_raw(cursor, user_id, db.is_sqlite(screen.engine)) or False
    if screen.cache is not None:
        screen.cache.put(key, g.generation, user)
    return user or None


# --- sessions -------------------------------------------------------------------------------------

def _served_here() -> bool:
    from clinic_lib.reception.api import is_loopback
    return _screen().settings.https or request.is_secure or is_loopback(request.remote_addr or "")


@bp.before_request
def _before():
    request.max_content_length = MAX_FORM_BYTES
    g.user, g.session_problem = None, None
    if request.endpoint == "reception.static":
        return None
    if not _served_here():
        return _message(403, "Not served to other computers",
                        "The reception screen is served only on this computer (127.0.0.1) unless a TLS proxy "
                        "serves it over HTTPS (CLINIC_HTTPS=1). See docs/reception.md, “Security settings”.")
    uid = session.get("uid")
    if uid is None:
        return None
    now = time.time()
    seen = session.get("seen", 0)
    if not isinstance(seen, (int, float)) or now - seen > web_session.idle_seconds(current_app):
        session.clear()
        g.session_problem = "expired"
        return None
    user = _account(uid) if isinstance(uid, int) else None
    if user is not None and user.disabled:
        session.clear()
        g.session_problem = "disabled"
    elif user is None or user.session_epoch != session.get("epoch"):
        session.clear()
        g.session_problem = "ended"
    else:
        g.user = user
        if now - seen > web_session.refresh_seconds(current_app):
            session["seen"] = now
    return None


@bp.after_request
def _headers(response):
    response.headers.update(SECURITY_HEADERS)
    if request.endpoint != "reception.static":
        response.headers["Cache-Control"] = "no-store"  # patient data: not kept by the browser
    return response


def _session_problem() -> tuple[int, str]:
    idle = web_session.idle_seconds(current_app) / 60
    return {
        "expired": (401, f"Your session ended after {idle:g} minutes without activity. Sign in again."),
        "ended": (401, "You were signed out (by “Sign out”, or a new password was set). Sign in again."),
        "disabled": (403, "This account has been disabled. Ask whoever manages the accounts "
                          "(clinic user) if that is a mistake."),
    }.get(g.session_problem, (401, "Sign in to see the call list."))


def signed_in(view):
    @wraps(view)
    def wrapper(*args, **kwargs):
        if g.user is not None:
            return view(*args, **kwargs)
        if g.session_problem is None and request.method == "GET" and not _fragment_wanted():
            return redirect(url_for(".sign_in", next=_here()), 303)
        status, message = _session_problem()
        if request.method == "POST":
            message += " Nothing was saved."
        if _fragment_wanted():
            return _fragment_error(status, message, sign_in=True)
        return _sign_in_page(status, message)
    return wrapper


def _here() -> str:
    return request.full_path.rstrip("?")


def _safe_next(value) -> str:
    """Only a path of this site (never another host: ``//host``, ``/\\host``)."""
    if isinstance(value, str) and value.startswith("/") and not value.startswith(("//", "/\\")) \
            and len(value) < 2000 and not any(ch in value for ch in "\r\n\\"):
        return value
    return url_for(".list_page")


def _sign_in_page(status: int, error: str | None = None, notice: str | None = None, name: str = "",
                  headers=None):
    # back to where the session ended: the page asked for, or the list after a refused POST
    here = _here() if request.method == "GET" and request.endpoint != "reception.sign_in" else None
    nxt = _safe_next(request.values.get("next") or here)
    html = _render("reception/sign_in.html", error=error, notice=notice, name=name, next=nxt,
                   csrf=web_session.csrf_token())
    return html, status, headers or {}


@bp.get("/sign-in")
def sign_in():
    if g.user is not None:
        return redirect(_safe_next(request.args.get("next")), 303)
    if g.session_problem:
        status, message = _session_problem()
        return _sign_in_page(status, message)
    notice = "You are signed out." if request.args.get("done") == "signed-out" else None
    return _sign_in_page(200, notice=notice)


@bp.post("/sign-in")
def sign_in_post():
    name = (request.form.get("name") or "").strip()[:100]
    if not web_session.csrf_ok(request.form.get(web_session.CSRF_FIELD)):
        return _sign_in_page(403, "The sign-in form was out of date (or did not come from this page). "
                                  "It is shown again: please sign in.", name=name)
    password = request.form.get("password") or ""
    if not name or not password:
        return _sign_in_page(400, "Enter your name and your password.", name=name)
    result = users.authenticate(_screen().engine, name, password)
    if result.status == "ok":
        web_session.begin(result.user.user_id, result.user.session_epoch)
        return redirect(_safe_next(request.form.get("next")), 303)
    if result.status == "locked":
        until = result.locked_until.astimezone(_screen().tz)
        wait = max(1, int((result.locked_until - dt.datetime.now(dt.timezone.utc)).total_seconds()))
        return _sign_in_page(
            429, f"Too many wrong passwords in a row: “{name}” is locked until {until:%H:%M} "
                 f"({users.LOCK_MINUTES} minutes). Try again then, or ask whoever manages the accounts "
                 f"for a new password (clinic user reset-password).", name=name, headers={"Retry-After": str(wait)})
    if result.status == "disabled":
        return _sign_in_page(403, "This account has been disabled. Ask whoever manages the accounts "
                                  "(clinic user) if that is a mistake.", name=name)
    return _sign_in_page(401, "Wrong name or password.", name=name)


@bp.post("/sign-out")
def sign_out():
    if g.user is not None and web_session.csrf_ok(request.form.get(web_session.CSRF_FIELD)):
        users.end_sessions(_screen().engine, g.user.user_id)
    elif g.user is not None:
        return _message(403, "Not signed out", "The sign-out form was out of date. Reload the page and "
                                               "press “Sign out” again.")
    session.clear()
    return redirect(url_for(".sign_in", done="signed-out"), 303)


# --- pages ------------------------------------------------------------------------------------------

WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
               "October", "November", "December")


@bp.app_template_filter("long_day")
def _long_day(day: dt.date) -> str:
    return f"{WEEKDAY_NAMES[day.weekday()]} {day.day} {MONTH_NAMES[day.month - 1]} {day.year}"


@bp.app_template_filter("short_day")
def _short_day(day: dt.date) -> str:
    return f"{WEEKDAY_NAMES[day.weekday()][:3]} {day.day} {MONTH_NAMES[day.month - 1][:3]}"


@bp.app_template_filter("day_time")
def _day_time(moment: dt.datetime) -> str:
    return f"{moment.day} {MONTH_NAMES[moment.month - 1][:3]} {moment:%H:%M}"


def _render(template: str, **context) -> str:
    """A page with what every page shows: the clinic, who is signed in, the sign-out form's token."""
    user = g.get("user")
    context.setdefault("csrf", web_session.csrf_token() if user else "")
    return render_template(template, clinic_name=_screen().settings.clinic_name, user=user,
                           outcomes=call_list.OUTCOME_LABELS, capacity=_screen().settings.call_capacity, **context)


def _day(raw, default_next: bool = True) -> dt.date:
    """A day from the query or the path; 400 with what is expected otherwise."""
    today = today_local(_screen().tz)
    if raw is None or raw == "":
        if not default_next:
            raise BadInput(400, "Expected a day YYYY-MM-DD.")
        return _next_clinic_day(today)
    try:
        day = parse_day(raw)
    except BadDate:
        raise BadInput(400, f"“{str(raw)[:40]}” is not a day: expected a date YYYY-MM-DD, such as "
                            f"{today.isoformat()}.") from None
    if day > today + dt.timedelta(days=FAR_AHEAD_DAYS):
        raise BadInput(400, f"{day.isoformat()} is too far ahead: the screen shows days up to "
                            f"{(today + dt.timedelta(days=FAR_AHEAD_DAYS)).isoformat()}, a year from today.")
    if day < EARLIEST_DAY:
        raise BadInput(400, f"{day.isoformat()} is too far back: the screen shows days from "
                            f"{EARLIEST_DAY.isoformat()}.")
    return day


def _weekdays(conn=None) -> frozenset[int]:
    """The clinic's working weekdays (from the roster), read once per request at most (on
    ``conn`` when the caller has one open)."""
    if "weekdays" not in g:
        def build():
            if conn is not None:
                return working_weekdays(conn)
            with _screen().engine.connect() as own:
                return working_weekdays(own)
        g.weekdays = _cached(("screen-weekdays",), build)
    return g.weekdays


def _next_clinic_day(day: dt.date, step: int = 1) -> dt.date:
    weekdays = _weekdays()
    for n in range(1, 8):
        candidate = day + dt.timedelta(days=step * n)
        if candidate.weekday() in weekdays:
            return candidate
    return day + dt.timedelta(days=step)


def _appointment_id(raw: str) -> int:
    if not _ID_RE.match(raw or "") or int(raw) < 1:
        raise BadInput(400, f"“{str(raw)[:40]}” is not an appointment number: expected a whole number from 1.")
    return int(raw)


def _show() -> str:
    show = (request.form.get("show") if request.method == "POST" else request.args.get("show")) or "all"
    if show not in SHOW:
        raise BadInput(400, f"show={str(show)[:40]!r}: expected show=all or show=open (not yet called).")
    return show


class _SlotUser:
    """Stands for whoever is signed in while a page is rendered for the cache."""
    name = Markup(USER_SLOT)


def _list_page_parts(day: dt.date, show: str) -> tuple:
    """The list page of a day as UTF-8 pieces between the slots for the CSRF token and the user's
    name (cached: nothing else in it depends on who asks)."""
    screen = _screen()
    today = today_local(screen.tz)

    def build():
        with screen.engine.connect() as conn:
            _weekdays(conn)
            rows, built = call_list.day_rows(conn, day, screen.tz, screen.smtp)
        progress = call_list.progress_of(rows)
        shown = [r for r in rows if not r.calls and not r.holdout] if show == "open" else rows
        latest = today + dt.timedelta(days=FAR_AHEAD_DAYS)
        nxt = _next_clinic_day(day)
        html = render_template(
            "reception/list.html", day=day, show=show, rows=shown, progress=progress,
            seen=call_list.seen_marker(rows), built_at=built,
            prev_day=_next_clinic_day(day, -1), next_day=nxt if nxt <= latest else None, latest_day=latest,
            earliest_day=EARLIEST_DAY, capacity=screen.settings.call_capacity,
            rows_html=Markup("").join(map(screen.rows_renderer(day, show), shown)),
            clinic_name=screen.settings.clinic_name,
            user=_SlotUser, csrf=Markup(CSRF_SLOT))
        return tuple(part if part in (CSRF_SLOT, USER_SLOT) else part.encode("utf-8")
                     for part in _SLOTS_RE.split(html))
    return _cached(("screen-list", day, show, today), build)


@bp.get("/")
@signed_in
def list_page():
    day = _day(request.args.get("day"))
    show = _show()
    values = {CSRF_SLOT: web_session.csrf_token().encode(), USER_SLOT: str(escape(g.user.name)).encode()}
    body = b"".join(values.get(part, part) for part in _list_page_parts(day, show))
    return Response(body, mimetype="text/html")


@bp.get("/print")
@signed_in
def print_page():
    screen = _screen()
    day = _day(request.args.get("day"))
    with screen.engine.connect() as conn:
        rows, _ = call_list.day_rows(conn, day, screen.tz, screen.smtp)
    return _render("reception/print.html", day=day, rows=rows, progress=call_list.progress_of(rows),
                   printed_at=dt.datetime.now(screen.tz))


@bp.get("/days/<day>/appointments/<appointment_id>/calls")
@signed_in
def history_page(day, appointment_id):
    screen = _screen()
    day, aid = _day(day, default_next=False), _appointment_id(appointment_id)
    with screen.engine.connect() as conn:
        calls = call_list.history(conn, day, aid, screen.tz)
        rows = call_list.some_rows(conn, day, screen.tz, aid, smtp_configured=screen.smtp)
    return _render("reception/history.html", day=day, row=rows[0], calls=calls)


@bp.post("/days/<day>/appointments/<appointment_id>/calls")
@signed_in
def record_call(day, appointment_id):
    screen = _screen()
    day, aid = _day(day, default_next=False), _appointment_id(appointment_id)
    if not web_session.csrf_ok(request.form.get(web_session.CSRF_FIELD)):
        raise BadInput(403, "This form is out of date or did not come from this page (its security token "
                            "is missing or wrong). Reload the page and record the call again. Nothing was saved.")
    show = _show()
    outcome = call_list.check_outcome(request.form.get("outcome"))
    note = call_list.check_note(request.form.get("note"))
    fragment = _fragment_wanted()
    seen = request.form.get("seen") or "0"
    seen = int(seen) if _ID_RE.match(seen) else 0
    try:
        read_back = call_list.record_call(screen.engine, day, aid, g.user.user_id, g.user.session_epoch, outcome,
                                          note, read_back_since=seen if fragment else None, tz=screen.tz,
                                          smtp_configured=screen.smtp,
                                          on_commit=screen.cache.bump if screen.cache is not None else None)
    except call_list.NotAllowed:
        session.clear()
        raise
    if not fragment:
        return redirect(url_for(".list_page", day=day.isoformat(), show=None if show == "all" else show)
                        + f"#appt-{aid}", 303)
    rows, progress = read_back
    html = screen.app.jinja_env.get_template("reception/fragment.html").render(
        progress=progress, seen=max(seen, call_list.seen_marker(rows)),
        rows_html=Markup("").join(map(screen.rows_renderer(day, show), rows)))
    return html.replace(CSRF_SLOT, web_session.csrf_token()), 201, {FRAGMENT_HEADER: "1"}


# --- errors -------------------------------------------------------------------------------------------

def _message(status: int, title: str, message: str):
    return _render("reception/message.html", title=title, message=message, back=url_for(".list_page")), status


def _fragment_error(status: int, message: str, sign_in: bool = False):
    """What the script shows in the row it posted from (it knows which)."""
    html = render_template("reception/fragment_error.html", message=message,
                           sign_in=url_for(".sign_in", next=url_for(".list_page")) if sign_in else None)
    return html, status, {FRAGMENT_HEADER: "1"}


@bp.errorhandler(BadInput)
def _bad_input(exc: BadInput):
    if _fragment_wanted():
        return _fragment_error(exc.status, exc.message)
    titles = {400: "Not understood", 403: "Refused", 404: "Not found"}
    return _message(exc.status, titles.get(exc.status, "Refused"), exc.message)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    messages = {413: f"The form was too large (at most {MAX_FORM_BYTES // 1024} KB). Nothing was saved.",
                405: f"{request.method} is not allowed here."}
    message = messages.get(exc.code, exc.description or "The request was refused.")
    if _fragment_wanted():
        return _fragment_error(exc.code or 500, message)
    return _message(exc.code or 500, exc.name or "Refused", message)


@bp.errorhandler(Exception)
def _internal_error(exc: Exception):
    log.exception("unhandled error on %s %s", request.method, request.path)
    message = ("The server failed (the details are in its log). Reload the page to see what was saved.")
    if _fragment_wanted():
        return _fragment_error(500, message)
    return _message(500, "Server error", message)
