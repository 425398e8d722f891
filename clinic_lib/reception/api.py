"""The reception API: a small JSON API over the priorities list and the call outcomes.

Routes (see ``openapi_spec()``; ``GET /openapi.json`` serves it):

- ``GET /priorities?day=YYYY-MM-DD`` -> ``{"day", "count", "built_at", "items": [...]}``: D's list
  from the ``priorities`` table joined with patients, physios, appointments and the latest call
  outcome (``call_status``), in rank order; one SQL query, nothing written. Without ``day``: the
  next clinic day after today in CLINIC_TZ (``calendar.next_clinic_day``, as the CLI), named by
  the answer's ``day`` and its ``Content-Location`` header.
- ``POST /appointments/<id>/call-outcome`` ``{"outcome": ..., "note": ...}`` -> 201: one more row
  of the appointment's call history (outcomes are kept, never overwritten).
- ``GET /health`` (no token): database reachable? and the latest run of ``etl_runs``.
- ``GET /openapi.json``: the OpenAPI 3.0 description.

Security: every route but ``/health`` needs ``Authorization: Bearer <CLINIC_API_TOKEN>`` (compared
in constant time). Without a configured token every route but ``/health`` answers 401, and
``create_server``/``serve`` refuse to listen on anything but a loopback address (CannotRun).
Errors are JSON ``{"error", "message"}`` with the status code; no debugger, no HTML error pages,
no stack traces, no NaN.

The same app serves reception's screen (``reception_screen``: HTML pages at ``/``, a signed-in
session instead of the token, served to loopback clients only unless ``CLINIC_HTTPS=1``).
"""
from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
import json
import logging
import re
from functools import cache, lru_cache
from pathlib import Path

import sqlalchemy as sa
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from clinic_lib.core import db
from clinic_lib.core.clinic_days import next_clinic_day
from clinic_lib.core.config import Settings, get_settings
from clinic_lib.core.errors import CannotRun
from clinic_lib.core.timeutil import BadDate, parse_day, today_local, utc_now_text

log = logging.getLogger("clinic.api")

MAX_NOTE = 2000
MAX_BODY = 16 * 1024
OUTCOME_HELP = ('expected a JSON object {"outcome": one of ' + ", ".join(db.CALL_OUTCOMES)
                + f', "note": optional text up to {MAX_NOTE} characters}}')
PUBLIC_ENDPOINTS = {"health"}
SCREEN = "reception"  # reception_screen's blueprint: its pages need a signed-in session, not the token
_ID_RE = re.compile(r"^[0-9]{1,19}$")


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str):
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


def _json(obj, status: int = 200, headers=None) -> Response:
    body = json.dumps(obj, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    return Response(body, status=status, mimetype="application/json", headers=headers)


def _error(status: int, error: str, message: str, headers=None) -> Response:
    return _json({"error": error, "message": message}, status, headers)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --- the priorities query -------------------------------------------------------------------------
#
# The list is read with ONE statement that also renders the items as JSON inside the database
# (SQLite json_object/json_group_array, Postgres json_build_object/json_agg): Python only wraps the
# array, so a 100-item list costs well under a millisecond. Index lookups only: priorities(day, rank),
# the primary keys, and call_outcomes(appointment_id, outcome_id) for the latest outcome.
# appt_start is rendered in clinic-local time with its offset: the UTC offset changes at known
# instants (DST), computed in Python for a window around the day and written into a CASE.

_WINDOW_DAYS = 400


def offset_transitions(tz, day: dt.date) -> tuple[list[dt.datetime], list[int]]:
    """UTC instants where the clinic's UTC offset changes within +-400 days of ``day``, and the
    offsets (seconds) before the first, between them, and after the last."""
    utc = dt.timezone.utc
    # Days far outside any clinic's life (year 1, year 9999) use the offsets around a nearby year.
    day = min(max(day, dt.date(1900, 1, 1)), dt.date(9000, 1, 1))
    t = dt.datetime.combine(day - dt.timedelta(days=_WINDOW_DAYS), dt.time(0), tzinfo=utc)
    end = t + dt.timedelta(days=2 * _WINDOW_DAYS)

    def offset(x):
        return int(x.astimezone(tz).utcoffset().total_seconds())

    offsets, changes = [offset(t)], []
    step = dt.timedelta(hours=6)
    while t < end:
        nxt = t + step
        if offset(nxt) != offsets[-1]:
            lo, hi = t, nxt  # offset(lo) == old, offset(hi) == new: bisect to the second
            while hi - lo > dt.timedelta(seconds=1):
                mid = lo + (hi - lo) / 2
                lo, hi = (mid, hi) if offset(mid) == offsets[-1] else (lo, mid)
            changes.append(hi.replace(microsecond=0))
            offsets.append(offset(nxt))
        t = nxt
    return changes, offsets


def _offset_text(seconds: int) -> str:
    sign = "+" if seconds >= 0 else "-"
    h, m = divmod(abs(seconds) // 60, 60)
    return f"{sign}{h:02d}:{m:02d}"


def _local_start_sql(sqlite: bool, changes, offsets) -> str:
    def fmt(off: int) -> str:
        if sqlite:
            return f"(strftime('%Y-%m-%dT%H:%M:%S', a.appt_start, '{off:+d} seconds') || '{_offset_text(off)}')"
        return (f"(to_char((a.appt_start AT TIME ZONE 'UTC') + interval '{off:d} seconds', "
                f"'YYYY-MM-DD\"T\"HH24:MI:SS') || '{_offset_text(off)}')")
    if not changes:
        return fmt(offsets[0])
    whens = []
    for change, off in zip(changes, offsets):
        text = change.strftime("%Y-%m-%dT%H:%M:%S+00:00")
        whens.append(f"WHEN a.appt_start < {'' if sqlite else 'TIMESTAMPTZ '}'{text}' THEN {fmt(off)}")
    return f"CASE {' '.join(whens)} ELSE {fmt(offsets[-1])} END"


def priorities_sql(sqlite: bool, tz, day: dt.date) -> str:
    """The statement for D's list: one row (items JSON array text, count, built_at); binds the day."""
    changes, offsets = offset_transitions(tz, day)
    local = _local_start_sql(sqlite, changes, offsets)
    latest = ("(SELECT c.outcome FROM call_outcomes c WHERE c.appointment_id = p.appointment_id "
              "ORDER BY c.outcome_id DESC LIMIT 1)")
    name = "trim(coalesce(pt.first_name, '') || ' ' || coalesce(pt.last_name, ''))"

    def finite(x):  # NaN and infinities become null
        return f"(CASE WHEN abs({x}) <= 1e308 THEN {x} END)"
    if sqlite:
        def flag(x):
            return f"CASE WHEN {x} = 1 THEN json('true') ELSE json('false') END"
        obj = "json_object"
    else:
        def flag(x):
            return f"({x} = 1)"
        obj = "json_build_object"
    fields = [("rank", "p.rank"), ("appointment_id", "p.appointment_id"), ("patient_id", "p.patient_id"),
              ("patient_name", name), ("phone", "pt.phone"),
              ("consent_form_received", flag("pt.consent_form_received")), ("physio_name", "ph.full_name"),
              ("appt_start", local), ("is_new_patient", flag("p.is_new_patient")),
              ("risk_bucket", "p.risk_bucket"), ("risk_score", finite("p.risk_score")),
              ("risk_source", "p.risk_source"), ("missing_phone", flag("p.missing_phone")),
              ("missing_consent", flag("p.missing_consent")), ("priority_score", finite("p.priority_score")),
              ("priority_reason", "p.priority_reason"), ("holdout", flag("p.holdout")), ("call_status", latest),
              ("appointment_status", "a.status")]
    item = f"{obj}(" + ", ".join(f"'{k}', {v}" for k, v in fields) + ")"
    joins = """FROM priorities p
        JOIN appointments a ON a.appointment_id = p.appointment_id
        JOIN patients pt ON pt.patient_id = p.patient_id
        LEFT JOIN physios ph ON ph.physio_id = a.physio_id"""
    if sqlite:
        # group_concat keeps the subquery's rank order (json_group_array would re-parse every item)
        return f"""SELECT '[' || coalesce(group_concat(item, ','), '') || ']', count(*), max(built_at) FROM (
            SELECT {item} AS item, p.built_at AS built_at {joins}
            WHERE p.day = ? ORDER BY p.rank)"""
    return f"""SELECT coalesce(json_agg({item} ORDER BY p.rank), '[]'::json)::text, count(*), max(p.built_at)
        {joins} WHERE p.day = %s"""


def _utc_iso(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).isoformat()
    return str(value)


class ListCache:
    """Rendered lists kept in memory, valid only while nothing was committed to the database.

    ``check`` (before every answer, on the request's pooled connection) returns the current
    generation after noticing any change; a change empties the cache, and an entry is only stored
    under the generation that was current before it was read. So an answer is never older than the
    last commit that finished before the request started. How a change is noticed depends on the
    database: ``SQLiteListCache``, ``PostgresListCache``.
    """

    MAX_ENTRIES = 64

    def __init__(self):
        import threading
        self.generation = 0
        self.entries: dict = {}
        self.lock = threading.Lock()

    def bump(self) -> None:
        with self.lock:
            self._invalidate()

    def _invalidate(self) -> None:
        """A change: a new generation, no entries (the caller holds the lock)."""
        self.generation += 1
        self.entries.clear()

    def check(self, conn, cursor) -> int:
        raise NotImplementedError

    def get(self, day, generation):
        with self.lock:
            return self.entries.get(day) if generation == self.generation else None

    def put(self, day, generation, body: bytes) -> None:
        with self.lock:
            if generation == self.generation:
                if len(self.entries) >= self.MAX_ENTRIES:
                    self.entries.clear()
                self.entries[day] = body


class SQLiteListCache(ListCache):
    """``PRAGMA data_version`` changes when any *other* connection (this process or another) has
    committed since the connection last looked; commits through this app's own engine (the outcome
    POSTs, or anything else using the engine) bump the generation when their connection goes back
    to the pool."""

    def __init__(self, engine: sa.Engine):
        super().__init__()
        sa.event.listen(engine, "commit", self._on_commit)
        sa.event.listen(engine.pool, "checkin", self._on_checkin)

    @staticmethod
    def _on_commit(conn):
        conn.connection.info["clinic_committed"] = True

    def _on_checkin(self, dbapi_connection, record):
        if record is not None and record.info.pop("clinic_committed", False):
            self.bump()

    def check(self, conn, cursor) -> int:
        """The current generation, after noticing commits by other connections."""
        version = cursor.execute("PRAGMA data_version").fetchone()[0]
        with self.lock:
            if conn.info.get("clinic_data_version") != version:
                conn.info["clinic_data_version"] = version
                self._invalidate()
            return self.generation


class PostgresListCache(ListCache):
    """Keyed on Postgres' current snapshot (``pg_current_snapshot()``: the next transaction id and
    the ids of the writing transactions still open). A snapshot equal as text sees exactly the same
    finished transactions, so the same data; the commit of any transaction that wrote, in this
    process or another, changes it. Writes to other databases of the same server change it too:
    an entry is dropped for nothing, never served stale. One round trip instead of the list's
    query (Postgres 13 or newer)."""

    def __init__(self):
        super().__init__()
        self.snapshot = None

    def check(self, conn, cursor) -> int:
        cursor.execute("SELECT pg_current_snapshot()::text")
        snapshot = cursor.fetchone()[0]
        with self.lock:
            if snapshot != self.snapshot:
                self.snapshot = snapshot
                self._invalidate()
            return self.generation


# --- the app ----------------------------------------------------------------------------------------

def _back_to_the_pool(conn, sqlite: bool) -> None:
    """Return a connection that read in autocommit (Postgres) to the pool in the engine's usual
    transactional mode, or drop it if that fails (a broken connection)."""
    if not sqlite:
        try:
            conn.driver_connection.autocommit = False
        except Exception:
            conn.invalidate()
    conn.close()


def create_app(settings: Settings | None = None, engine: sa.Engine | None = None,
               cache: bool | None = None) -> Flask:
    """The Flask app (one pooled engine per app). Serve it with ``serve()`` (waitress).

    ``cache`` (default: on): keep the rendered lists in memory and serve them while the database
    provably has not changed (see ListCache).
    """
    settings = settings or get_settings()
    engine = engine or db.make_engine(settings.database_url)
    try:
        from clinic_lib.core.migrate import ensure_schema
        ensure_schema(engine)
    except sa.exc.OperationalError:
        log.warning("database not reachable at start-up; /health reports it")

    # no static folder or templates of its own (Flask would look in the working directory);
    # reception's screen brings its own (reception_screen)
    app = Flask("clinic_api", static_folder=None, template_folder=None)
    app.debug = False
    app.config.update(PROPAGATE_EXCEPTIONS=False, TRAP_HTTP_EXCEPTIONS=False, MAX_CONTENT_LENGTH=MAX_BODY,
                      JSON_SORT_KEYS=False)
    app.url_map.strict_slashes = True
    app.extensions["clinic_engine"] = engine
    app.extensions["clinic_settings"] = settings
    token = (settings.api_token or "").encode("utf-8")
    sqlite = db.is_sqlite(engine)
    tz = settings.clinic_tz

    if cache is None:
        cache = True
    if cache and sqlite:
        cache = SQLiteListCache(engine)
    elif cache and (engine.dialect.server_version_info or (0,)) >= (13,):
        cache = PostgresListCache()
    else:  # off, or a Postgres before 13 (or not reachable at start-up): no pg_current_snapshot()
        cache = None
    app.extensions["clinic_list_cache"] = cache

    @lru_cache(maxsize=1024)
    def sql_for(day: dt.date) -> str:
        return priorities_sql(sqlite, tz, day)

    @app.before_request
    def _authenticate():
        if request.endpoint in PUBLIC_ENDPOINTS or request.blueprint == SCREEN:
            return None  # the screen signs people in with sessions of its own
        if not token:  # patient names and phones: never served without a token
            return _error(401, "unauthorized", "no API token is configured: set CLINIC_API_TOKEN "
                                               "on the server and send Authorization: Bearer <token>")
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode("utf-8", "replace"),
                                                                 token):
            return _error(401, "unauthorized", "expected header Authorization: Bearer <CLINIC_API_TOKEN>",
                          {"WWW-Authenticate": 'Bearer realm="clinic"'})
        return None

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return _error(exc.status, exc.error, exc.message)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        messages = {404: "no such route or resource", 405: f"method {request.method} not allowed here",
                    413: f"request body too large (at most {MAX_BODY} bytes)"}
        name = (exc.name or "error").lower().replace(" ", "_")
        headers = {"Allow": ", ".join(exc.valid_methods)} if getattr(exc, "valid_methods", None) else None
        return _error(exc.code or 500, name, messages.get(exc.code, exc.description or name), headers)

    @app.errorhandler(Exception)
    def _internal_error(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error(500, "internal_error", "internal server error; the details are in the server log")

    @app.get("/health")
    def health():
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
                run = conn.execute(sa.select(db.etl_runs.c.job, db.etl_runs.c.day, db.etl_runs.c.status,
                                             db.etl_runs.c.started_at, db.etl_runs.c.finished_at)
                                   .order_by(db.etl_runs.c.run_id.desc()).limit(1)).mappings().first()
        except Exception:
            log.exception("health check: database not reachable")
            return _json({"status": "error", "database": "unreachable", "latest_run": None,
                          "checked_at": utc_now_text()}, 503)
        latest = None
        if run:
            latest = {"job": run["job"], "day": str(run["day"]) if run["day"] is not None else None,
                      "status": run["status"], "started_at": _utc_iso(run["started_at"]),
                      "finished_at": _utc_iso(run["finished_at"])}
        return _json({"status": "ok", "database": "reachable", "latest_run": latest, "checked_at": utc_now_text()})

    @app.get("/priorities")
    def get_priorities():
        unknown = sorted(k for k in request.args if k != "day")
        if unknown or len(request.args.getlist("day")) > 1:
            shown = ", ".join(repr(k[:40]) for k in unknown[:5]) or "day (repeated)"
            raise ApiError(400, "bad_request", f"unexpected query parameter(s) {shown}; "
                           "expected only day=YYYY-MM-DD")
        raw = request.args.get("day")
        if raw is None:
            # reception's question is "whom do we call tonight?": the next clinic day after today
            # (as the CLI's default); the answer's "day" and Content-Location say which day it is
            day = next_clinic_day(engine, today_local(tz))
        elif raw == "":
            raise ApiError(400, "bad_request", "expected query parameter day=YYYY-MM-DD, or none for "
                                               "the next clinic day")
        else:
            try:
                day = parse_day(raw)
            except BadDate:
                raise ApiError(400, "bad_request",
                               f"expected query parameter day=YYYY-MM-DD (a real date), got {raw[:40]!r}") from None
        # A pooled DBAPI connection and one statement (its own snapshot); nothing is written.
        conn = engine.raw_connection()
        try:
            if not sqlite:
                # so that psycopg sends no BEGIN and the pool no ROLLBACK: two round trips, half
                # of a request's time on Postgres (bench_api.py)
                conn.driver_connection.autocommit = True
            cursor = conn.cursor()
            generation = cache.check(conn, cursor) if cache else None
            body = cache.get(day, generation) if cache else None
            if body is None:
                cursor.execute(sql_for(day), (day.isoformat() if sqlite else day,))
                items, count, built_at = cursor.fetchone()
                head = json.dumps({"day": day.isoformat(), "count": count, "built_at": _utc_iso(built_at)},
                                  separators=(",", ":"))
                body = (head[:-1] + ',"items":' + items + "}").encode("utf-8")
                if cache:
                    cache.put(day, generation, body)
            cursor.close()
        finally:
            _back_to_the_pool(conn, sqlite)
        headers = {"Content-Location": f"/priorities?day={day.isoformat()}"} if raw is None else None
        return Response(body, status=200, mimetype="application/json", headers=headers)

    @app.post("/appointments/<appointment_id>/call-outcome")
    def post_call_outcome(appointment_id: str):
        if not _ID_RE.match(appointment_id) or not 1 <= int(appointment_id) <= db.MAX_ID:
            raise ApiError(400, "bad_request", "expected an appointment id: a whole number from 1")
        aid = int(appointment_id)
        try:
            body = request.get_json(silent=True, force=False)
        except RecursionError:  # absurdly deep nesting
            body = None
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", OUTCOME_HELP + " with Content-Type: application/json")
        unknown = sorted(set(body) - {"outcome", "note"})
        if unknown:
            raise ApiError(400, "bad_request", f"unknown field(s) {', '.join(k[:40] for k in unknown[:5])}; "
                           + OUTCOME_HELP)
        outcome, note = body.get("outcome"), body.get("note")
        if outcome not in db.CALL_OUTCOMES:
            raise ApiError(400, "bad_request", OUTCOME_HELP)
        if note is not None:
            if not isinstance(note, str) or len(note) > MAX_NOTE or "\x00" in note:
                raise ApiError(400, "bad_request", f"note: expected text up to {MAX_NOTE} characters "
                               "(no NUL characters) or null")
            try:
                note.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(400, "bad_request", "note: expected valid Unicode text") from None
        recorded_at = utc_now_text()
        with db.begin_write(engine) as conn:
            exists = conn.execute(sa.select(db.appointments.c.appointment_id)
                                  .where(db.appointments.c.appointment_id == aid)).first()
            if not exists:
                raise ApiError(404, "not_found", f"no appointment {aid}")
            outcome_id = conn.execute(db.call_outcomes.insert().values(
                appointment_id=aid, outcome=outcome, note=note, recorded_at=recorded_at)
                .returning(db.call_outcomes.c.outcome_id)).scalar_one()
        return _json({"outcome_id": outcome_id, "appointment_id": aid, "outcome": outcome, "note": note,
                      "recorded_at": recorded_at}, 201)

    @app.get("/openapi.json")
    def openapi():
        return _json(openapi_spec())

    from clinic_lib.reception.screen import register
    register(app, settings, engine)
    return app


# --- serving ------------------------------------------------------------------------------------------

def check_bind(host: str, settings: Settings) -> None:
    if not settings.api_token and not is_loopback(host):
        raise CannotRun(f"refusing to listen on {host}: no CLINIC_API_TOKEN is configured, so only a loopback "
                        "address (127.0.0.1, ::1, localhost) is allowed; set CLINIC_API_TOKEN to serve the network")


def create_server(app: Flask | None = None, host: str | None = None, port: int | None = None,
                  settings: Settings | None = None, threads: int = 4, cache: bool | None = None, **kwargs):
    """A waitress server (not yet running; call ``.run()``); ``port=0`` picks a free port."""
    import waitress
    settings = settings or (app.extensions["clinic_settings"] if app else get_settings())
    host = host or settings.api_host
    port = settings.api_port if port is None else port
    check_bind(host, settings)
    app = app or create_app(settings, cache=cache)
    return waitress.create_server(app, host=host, port=port, threads=threads, ident="clinic-api",
                                  clear_untrusted_proxy_headers=True, **kwargs)


def serve(host: str | None = None, port: int | None = None, threads: int = 4, cache: bool | None = None) -> None:
    """Serve the API with waitress until interrupted (``clinic api``)."""
    settings = get_settings()
    server = create_server(None, host, port, settings, threads, cache=cache)
    url = f"http://{host or settings.api_host}:{server.effective_port}"
    print(f"clinic api: reception's screen on {url}/ (sign in with an account of `clinic user`); JSON API "
          f"{'with the Bearer token' if settings.api_token else 'off: no CLINIC_API_TOKEN set, every route but /health answers 401'}",
          flush=True)
    server.run()


# --- OpenAPI ------------------------------------------------------------------------------------------

OPENAPI_FILE = Path(__file__).with_name("openapi.json")  # the API's description, a data file beside the code


@cache
def openapi_spec() -> dict:
    """The OpenAPI 3.0 document (``openapi.json``; tests hold its enums and limits to the code's)."""
    return json.loads(OPENAPI_FILE.read_text())
