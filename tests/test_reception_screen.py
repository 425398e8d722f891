"""Reception's screen through the real Flask app (test client) on real databases (SQLite file and
Postgres): sign-in, the list, recording calls (plain form and the script's request), sessions,
CSRF, and the bad-input list. The same screen in Chromium: test_reception_browser.py."""
from __future__ import annotations

import datetime as dt
import http.client
import os
import re
import stat
import threading
import time
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa

from clinic_lib.core import db
from clinic_lib.core.clinic_days import next_clinic_day
from clinic_lib.core.config import get_settings
from clinic_lib.core.errors import CannotRun
from clinic_lib.core.timeutil import today_local
from clinic_lib.reception import users
from clinic_lib.reception.api import create_app, create_server
from clinic_lib.reception.priorities import build_priorities

from reception_data import DAY, PASSWORDS, add_model_scores, add_users, load_clinic

TOKEN = "test-token-0123456789"
LIST = "/?day=2026-03-30"
FRAGMENT = {"X-Clinic-Fragment": "1"}


def calls_url(aid, day="2026-03-30"):
    return f"/days/{day}/appointments/{aid}/calls"


@pytest.fixture
def screen(engine, clinic_env, monkeypatch):
    """The reception clinic (tests/reception_data.py) with its list built and two accounts."""
    monkeypatch.setenv("CLINIC_API_TOKEN", TOKEN)
    load_clinic(engine)
    add_model_scores(engine, {101: (0.41, "high"), 102: (0.05, "low")})
    build_priorities(DAY, engine=engine)
    ids = add_users(engine)
    app = create_app(get_settings(), engine)
    app.user_ids = ids
    return app


def token_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def signed_in(app, name="anna", password=None):
    client = app.test_client()
    page = client.get("/sign-in").get_data(as_text=True)
    r = client.post("/sign-in", data={"csrf_token": token_of(page), "name": name,
                                      "password": password or PASSWORDS[name]})
    assert r.status_code == 303, r.get_data(as_text=True)
    client.csrf = token_of(client.get(LIST).get_data(as_text=True))
    return client


def outcomes(engine):
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            sa.select(db.call_outcomes.c.appointment_id, db.call_outcomes.c.outcome, db.call_outcomes.c.note,
                      db.users.c.name).select_from(db.call_outcomes.outerjoin(
                          db.users, db.users.c.user_id == db.call_outcomes.c.recorded_by))
            .order_by(db.call_outcomes.c.outcome_id))]


def rows_in(html: str) -> list[int]:
    return [int(x) for x in re.findall(r'<li class="call[^"]*" id="appt-(\d+)"', html)]


def text(html: str) -> str:
    """The page's text, tags removed and spaces collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html)).strip()


def row_html(html: str, aid: int) -> str:
    """The HTML of one row of a page or fragment."""
    start = html.rindex("<li", 0, html.index(f'id="appt-{aid}"'))
    end = re.compile(r'<li class="call|</ol>|<span id="seen"').search(html, start + 3)
    return html[start:end.start() if end else len(html)]


def test_sign_in_and_the_list(screen):
    client = screen.test_client()
    r = client.get(LIST)
    assert r.status_code == 303 and r.headers["Location"] == "/sign-in?next=/?day%3D2026-03-30"
    page = client.get("/sign-in?next=/?day%3D2026-03-30")
    assert page.status_code == 200 and 'autocomplete="current-password"' in page.get_data(as_text=True)
    cookie = page.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    r = client.post("/sign-in", data={"csrf_token": token_of(page.get_data(as_text=True)), "name": "Anna",
                                      "password": PASSWORDS["anna"], "next": "/?day=2026-03-30"})
    assert r.status_code == 303 and r.headers["Location"] == "/?day=2026-03-30"
    r = client.get(LIST)
    html = r.get_data(as_text=True)
    assert r.status_code == 200 and r.mimetype == "text/html"
    assert r.headers["Cache-Control"] == "no-store" and "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert rows_in(html) == [101, 102, 103, 104]  # rank order (the API's test has the same)
    assert "Calls for Monday 30 March 2026" in text(html) and "Signed in as anna" in text(html)
    assert "0 of 4 called, 0 reached" in text(html)
    alice, bob, carla, dieter = (text(row_html(html, a)) for a in (101, 102, 103, 104))
    assert '<a href="tel:+49301234567">+49 30 1234567</a>' in row_html(html, 101)
    assert alice.startswith("Rank 1 09:00 Alice Adler +49 30 1234567 with Anna Berg High risk "
                            "high risk 0.41, early slot 09:00")
    assert "No reminder: not sent yet" in alice and "Not called yet" in alice
    assert "First visit" in bob and "Missing phone" in bob and "Missing consent form" in bob and "tel:" not in bob
    assert "No reminder: no valid email address" in carla  # Carla has no email address
    assert "123" in dieter and "tel:" not in row_html(html, 104) and "Missing phone" in dieter
    assert "No reminder: no consent to reminders" in dieter
    # six outcome buttons per row, each form with the session's token
    assert html.count('name="outcome"') == 6 * 4
    assert set(re.findall(r'name="csrf_token" value="([^"]+)"', html)) == {client.get(LIST).get_data(
        as_text=True).split('name="csrf_token" value="')[1].split('"')[0]}


def test_record_a_call_without_and_with_the_script(screen, engine):
    anna, ben = signed_in(screen, "anna"), signed_in(screen, "ben")
    # a plain form post (no script): 303 back to the row
    r = anna.post(calls_url(102), data={"csrf_token": anna.csrf, "outcome": "voicemail", "note": "try after 6"})
    assert r.status_code == 303 and r.headers["Location"] == "/?day=2026-03-30#appt-102"
    assert outcomes(engine) == [(102, "voicemail", "try after 6", "anna")]
    bob = text(row_html(anna.get(LIST).get_data(as_text=True), 102))
    assert "Latest call: Voicemail by anna," in bob and "try after 6" in bob and "History (1 call)" in bob
    # the script's request from ben, whose page was shown before anna's call (seen = 0): his row,
    # and anna's row too, and the progress
    r = ben.post(calls_url(101), data={"csrf_token": ben.csrf, "outcome": "reached", "seen": "0"}, headers=FRAGMENT)
    assert r.status_code == 201 and r.headers["X-Clinic-Fragment"] == "1"
    fragment = r.get_data(as_text=True)
    assert rows_in(fragment) == [101, 102]
    assert "Reached by ben" in text(row_html(fragment, 101)) and "Voicemail by anna" in text(row_html(fragment, 102))
    assert '<p id="progress" class="progress"><strong>2 of 4 called</strong>, 1 reached</p>' in fragment
    seen = int(re.search(r'data-seen="(\d+)"', fragment).group(1))
    # nothing new since: only the row posted to comes back
    r = ben.post(calls_url(102), data={"csrf_token": ben.csrf, "outcome": "confirmed", "seen": str(seen)},
                 headers=FRAGMENT)
    assert rows_in(r.get_data(as_text=True)) == [102] and "2 of 4 called</strong>, 2 reached" in r.get_data(as_text=True)
    assert outcomes(engine) == [(102, "voicemail", "try after 6", "anna"), (101, "reached", None, "ben"),
                                (102, "confirmed", None, "ben")]
    # the filter: not yet called
    html = anna.get(LIST + "&show=open").get_data(as_text=True)
    assert rows_in(html) == [103, 104] and "2 of 4 called, 2 reached" in text(html)
    assert 'name="show" value="open"' in html
    r = anna.post(calls_url(103), data={"csrf_token": anna.csrf, "outcome": "no_answer", "show": "open"})
    assert r.headers["Location"] == "/?day=2026-03-30&show=open#appt-103"
    # the history: everyone's outcomes, newest first
    history = text(anna.get(calls_url(102)).get_data(as_text=True))
    assert "2 calls, newest first" in history
    assert re.search(r"Confirmed ben .*Voicemail anna try after 6", history)


def test_two_receptionists_at_once_both_kept(screen, engine):
    """anna and ben record an outcome for the same appointment at the same moment through a real
    waitress server: both rows are kept, each with its name."""
    anna, ben = signed_in(screen, "anna"), signed_in(screen, "ben")
    server = create_server(screen, host="127.0.0.1", port=0, threads=4)

    def run():
        try:
            server.run()
        except OSError:  # the listening socket closed under select() at shutdown
            pass
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    barrier, statuses = threading.Barrier(2), []

    def post(client, outcome):
        cookie = client.get_cookie("clinic_session").value
        conn = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=30)
        barrier.wait()
        conn.request("POST", calls_url(103), body=urlencode({"csrf_token": client.csrf, "outcome": outcome}),
                     headers={"Cookie": f"clinic_session={cookie}", **FRAGMENT,
                              "Content-Type": "application/x-www-form-urlencoded"})
        statuses.append(conn.getresponse().status)
        conn.close()
    try:
        workers = [threading.Thread(target=post, args=a) for a in ((anna, "voicemail"), (ben, "reached"))]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        server.close()
        thread.join(timeout=5)
    assert statuses == [201, 201]
    assert sorted(outcomes(engine)) == [(103, "reached", None, "ben"), (103, "voicemail", None, "anna")]


def test_wrong_passwords_lock_the_name_across_processes(screen, engine, db_url):
    client = screen.test_client()
    token = token_of(client.get("/sign-in").get_data(as_text=True))

    def attempt(app_client, password, name="anna"):
        return app_client.post("/sign-in", data={"csrf_token": token, "name": name, "password": password})
    r = attempt(client, "not the password", name="nobody")  # an unknown name: the same answer
    assert r.status_code == 401 and "Wrong name or password." in r.get_data(as_text=True)
    for _ in range(3):
        r = attempt(client, "wrong password")
        assert r.status_code == 401 and "Wrong name or password." in r.get_data(as_text=True)
    assert attempt(client, PASSWORDS["anna"]).status_code == 303  # a success starts the count again
    client.post("/sign-out", data={"csrf_token": token_of(client.get(LIST).get_data(as_text=True))})
    token = token_of(client.get("/sign-in").get_data(as_text=True))
    for _ in range(4):
        assert attempt(client, "wrong password").status_code == 401
    # the fifth, through another app on its own engine (another process would be the same)
    other_engine = db.make_engine(db_url)
    other = create_app(get_settings(), other_engine).test_client()
    other_token = token_of(other.get("/sign-in").get_data(as_text=True))
    r = other.post("/sign-in", data={"csrf_token": other_token, "name": "anna", "password": "wrong password"})
    assert r.status_code == 429 and "is locked until" in r.get_data(as_text=True)
    assert 890 <= int(r.headers["Retry-After"]) <= 900
    r = attempt(client, PASSWORDS["anna"])  # the right password, but the name is locked
    assert r.status_code == 429 and "Too many wrong passwords in a row" in r.get_data(as_text=True)
    with engine.connect() as conn:
        failed, until = conn.execute(sa.select(db.users.c.failed_sign_ins, db.users.c.locked_until)
                                     .where(db.users.c.name == "anna")).one()
    assert failed == 0
    lock = dt.datetime.fromisoformat(until) - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(minutes=14) < lock <= dt.timedelta(minutes=15)
    assert attempt(client, PASSWORDS["ben"], name="ben").status_code == 303  # other names are not locked
    # 15 minutes later (the lock moved into the past), the right password signs in
    with db.begin_write(engine) as conn:
        conn.execute(db.users.update().where(db.users.c.name == "anna")
                     .values(locked_until="2026-01-01T00:00:00+00:00"))
    client = screen.test_client()
    token = token_of(client.get("/sign-in").get_data(as_text=True))
    assert attempt(client, PASSWORDS["anna"]).status_code == 303
    other_engine.dispose()


def test_a_new_password_lifts_the_lock(screen, engine):
    for _ in range(5):
        users.authenticate(engine, "ben", "wrong password")
    assert users.authenticate(engine, "ben", PASSWORDS["ben"]).status == "locked"
    users.reset_password(engine, "ben", "ben's new evening password")
    assert users.authenticate(engine, "ben", "ben's new evening password").status == "ok"


def test_idle_session_expires(screen, engine):
    client = signed_in(screen)
    with client.session_transaction() as s:
        s["seen"] = time.time() - 29 * 60  # 29 minutes idle: still signed in (and the clock restarts)
    assert client.get(LIST).status_code == 200
    with client.session_transaction() as s:
        assert time.time() - s["seen"] < 5
        s["seen"] = time.time() - 31 * 60
    r = client.post(calls_url(101), data={"csrf_token": client.csrf, "outcome": "reached"})
    assert r.status_code == 401
    assert "Your session ended after 30 minutes without activity. Sign in again. Nothing was saved." in \
        text(r.get_data(as_text=True))
    assert outcomes(engine) == []
    r = client.get(LIST)  # the session is gone: the usual way to the sign-in page
    assert r.status_code == 303 and r.headers["Location"].startswith("/sign-in")


def test_idle_limit_is_configurable(screen, engine, monkeypatch):
    monkeypatch.setenv("CLINIC_SESSION_IDLE_MINUTES", "5")
    app = create_app(get_settings(), engine)
    client = signed_in(app)
    with client.session_transaction() as s:
        s["seen"] = time.time() - 6 * 60
    r = client.get(LIST)
    assert r.status_code == 401 and "after 5 minutes without activity" in r.get_data(as_text=True)
    monkeypatch.setenv("CLINIC_SESSION_IDLE_MINUTES", "0")
    with pytest.raises(CannotRun, match="CLINIC_SESSION_IDLE_MINUTES"):
        create_app(get_settings(), engine)


def test_a_disabled_account_stops_at_its_next_request(screen, engine):
    ben = signed_in(screen, "ben")
    users.disable_user(engine, "ben")  # as `clinic user disable ben` does, from another connection
    r = ben.post(calls_url(101), data={"csrf_token": ben.csrf, "outcome": "reached"})
    assert r.status_code == 403 and "This account has been disabled" in r.get_data(as_text=True)
    assert outcomes(engine) == []
    assert ben.get(LIST).status_code == 303  # the session is gone
    ben = screen.test_client()
    token = token_of(ben.get("/sign-in").get_data(as_text=True))
    r = ben.post("/sign-in", data={"csrf_token": token, "name": "ben", "password": PASSWORDS["ben"]})
    assert r.status_code == 403 and "disabled" in r.get_data(as_text=True)
    # the script's request gets the message as a fragment for the row
    anna = signed_in(screen, "anna")
    users.disable_user(engine, "anna")
    r = anna.post(calls_url(101), data={"csrf_token": anna.csrf, "outcome": "reached"}, headers=FRAGMENT)
    assert r.status_code == 403 and r.headers["X-Clinic-Fragment"] == "1"
    assert 'class="row-error" role="alert"' in r.get_data(as_text=True) and outcomes(engine) == []


def test_sign_out_ends_every_session_of_the_account(screen):
    desk, phone = signed_in(screen, "anna"), signed_in(screen, "anna")
    r = desk.post("/sign-out", data={"csrf_token": desk.csrf})
    assert r.status_code == 303 and r.headers["Location"] == "/sign-in?done=signed-out"
    assert "You are signed out." in desk.get(r.headers["Location"]).get_data(as_text=True)
    r = phone.get(LIST)
    assert r.status_code == 401 and "You were signed out" in r.get_data(as_text=True)
    # a forged sign-out (no token) signs no one out
    ben = signed_in(screen, "ben")
    assert ben.post("/sign-out", data={}).status_code == 403
    assert ben.get(LIST).status_code == 200


def test_forms_without_the_csrf_token_are_refused(screen, engine):
    anna, ben = signed_in(screen, "anna"), signed_in(screen, "ben")
    for data, headers in (({"outcome": "reached"}, {}), ({"outcome": "reached", "csrf_token": "forged"}, {}),
                          ({"outcome": "reached", "csrf_token": ben.csrf}, {}),  # another session's
                          ({"outcome": "reached"}, FRAGMENT)):
        r = anna.post(calls_url(101), data=data, headers=headers)
        assert r.status_code == 403, data
        assert "security token is missing or wrong" in r.get_data(as_text=True)
    assert outcomes(engine) == []
    # sign-in needs the sign-in page's token too
    client = screen.test_client()
    r = client.post("/sign-in", data={"name": "anna", "password": PASSWORDS["anna"]})
    assert r.status_code == 403 and "sign-in form was out of date" in r.get_data(as_text=True)
    assert client.get(LIST).status_code == 303


LONG = "é" * 2001


BAD_INPUT = [
    ("get", "/?day=2026-02-30", None, 400, "“2026-02-30” is not a day: expected a date YYYY-MM-DD"),
    ("get", "/?day=tomorrow", None, 400, "is not a day"),
    ("get", "/?day=2026-03-30%27%20OR%201=1", None, 400, "is not a day"),
    ("get", "/?day=9999-12-31", None, 400, "9999-12-31 is too far ahead: the screen shows days up to"),
    ("get", "/?day=1899-12-31", None, 400, "1899-12-31 is too far back"),
    ("get", "/?day=2026-03-30&show=maybe", None, 400, "expected show=all or show=open"),
    ("get", "/print?day=2026-13-01", None, 400, "is not a day"),
    ("get", calls_url(9999), None, 404, "There is no appointment 9999."),
    ("get", calls_url(301), None, 404, "Appointment 301 is not on the call list of 2026-03-30"),
    ("post", calls_url(9999), {"outcome": "reached"}, 404, "There is no appointment 9999. Nothing was saved."),
    ("post", calls_url(301), {"outcome": "reached"}, 404,
     "Appointment 301 is not on the call list of 2026-03-30 (it is an appointment of 2026-03-31)"),
    ("post", calls_url(105), {"outcome": "reached"}, 404, "not on the call list"),  # canceled before the build
    ("post", calls_url("abc"), {"outcome": "reached"}, 400, "“abc” is not an appointment number"),
    ("post", calls_url("-1"), {"outcome": "reached"}, 400, "is not an appointment number"),
    ("post", calls_url("99999999999999999999"), {"outcome": "reached"}, 400, "is not an appointment number"),
    ("post", calls_url(101, day="2026-02-30"), {"outcome": "reached"}, 400, "is not a day"),
    ("post", calls_url(101, day="9999-01-01"), {"outcome": "reached"}, 400, "too far ahead"),
    ("post", calls_url(101), {"outcome": "maybe"}, 400,
     "Outcome 'maybe' is not one of: Reached, Voicemail, No answer, Confirmed, Rescheduled, Canceled"),
    ("post", calls_url(101), {}, 400, "Outcome nothing is not one of"),
    ("post", calls_url(101), {"outcome": "reached'); DROP TABLE call_outcomes; --"}, 400, "is not one of"),
    ("post", calls_url(101), {"outcome": "reached", "note": LONG}, 400,
     "The note has 2,001 characters; at most 2,000 are kept. Shorten it; nothing was saved."),
    ("post", calls_url(101), {"outcome": "reached", "note": "a\x00b"}, 400, "NUL"),
    ("post", calls_url(101), {"outcome": "reached", "note": "x" * 70_000}, 413, "too large"),
]


@pytest.mark.parametrize("method, path, data, status, message, script", [
    pytest.param(*case, script, id=f"{case[0]} {case[1][:40]} {case[3]}{' script' if script else ''}")
    for case in BAD_INPUT for script in ((False, True) if case[0] == "post" else (False,))])
def test_bad_input_is_refused_and_nothing_written(screen, engine, method, path, data, status, message, script):
    """Each bad request as a plain form sends it (a page with the message) and, for posts, as the
    page's script sends it (the message for the row)."""
    client = signed_in(screen)
    headers = FRAGMENT if script else {}
    if method == "get":
        r = client.get(path)
    else:
        r = client.post(path, data={"csrf_token": client.csrf, **data}, headers=headers)
    html = r.get_data(as_text=True)
    assert r.status_code == status, html[:500]
    assert message in text(html).replace("&#39;", "'"), text(html)[:800]
    if script:
        assert r.headers["X-Clinic-Fragment"] == "1" and html.startswith('<p class="row-error" role="alert">')
    else:
        assert "<h1>" in html and "Back to the call list" in html  # a page, with the way back
    assert outcomes(engine) == []


def test_a_note_of_2000_characters_is_kept(screen, engine):
    client = signed_in(screen)
    note = "ü" * 2000  # 12 KB percent-encoded: over the API's 16 KB? no, under the screen's 64 KB
    r = client.post(calls_url(101), data={"csrf_token": client.csrf, "outcome": "reached", "note": note})
    assert r.status_code == 303 and outcomes(engine) == [(101, "reached", note, "anna")]


def test_html_in_a_note_is_shown_as_text(screen, engine):
    client = signed_in(screen)
    note = '<script>alert("x")</script><b onmouseover="alert(1)">bold</b> & "quotes"'
    client.post(calls_url(102), data={"csrf_token": client.csrf, "outcome": "voicemail", "note": note})
    assert outcomes(engine) == [(102, "voicemail", note, "anna")]  # kept as typed
    for page in (client.get(LIST), client.get(calls_url(102)),
                 client.post(calls_url(102), data={"csrf_token": client.csrf, "outcome": "reached", "note": note},
                             headers=FRAGMENT)):
        html = page.get_data(as_text=True)
        assert "<script>alert" not in html and "<b onmouseover" not in html
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;b onmouseover=&#34;alert(1)&#34;&gt;bold&lt;/b&gt; " \
               "&amp; &#34;quotes&#34;" in html


def test_outcomes_from_the_api_show_without_a_name(screen, engine):
    api = screen.test_client()
    r = api.post("/appointments/103/call-outcome", json={"outcome": "confirmed"},
                 headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 201
    assert outcomes(engine) == [(103, "confirmed", None, None)]
    client = signed_in(screen)
    assert "Confirmed by the API" in text(row_html(client.get(LIST).get_data(as_text=True), 103))
    # the list shown after the API's write is the new one (the cached page was dropped)
    client.post(calls_url(103), data={"csrf_token": client.csrf, "outcome": "reached"})
    assert "Reached by anna" in text(row_html(client.get(LIST).get_data(as_text=True), 103))


def test_the_page_follows_commits_of_other_processes(screen, engine, db_url):
    client = signed_in(screen)
    assert "Alice Adler" in client.get(LIST).get_data(as_text=True)
    other = db.make_engine(db_url)
    with db.begin_write(other) as conn:
        conn.execute(db.patients.update().where(db.patients.c.patient_id == 1).values(first_name="Alicia"))
    other.dispose()
    html = client.get(LIST).get_data(as_text=True)
    assert "Alicia Adler" in html and "Alice Adler" not in html


def test_the_bearer_token_is_no_session_and_the_api_still_needs_it(screen):
    client = screen.test_client()
    r = client.get(LIST, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 303 and r.headers["Location"].startswith("/sign-in")
    assert client.get("/priorities?day=2026-03-30").status_code == 401
    signed = signed_in(screen)
    assert signed.get("/priorities?day=2026-03-30").status_code == 401  # a session is no token


def test_served_to_other_computers_only_behind_https(screen, engine, monkeypatch):
    remote = {"REMOTE_ADDR": "192.0.2.10"}
    client = screen.test_client()
    r = client.get("/sign-in", environ_base=remote)
    assert r.status_code == 403 and "served only on this computer" in r.get_data(as_text=True)
    assert client.get("/sign-in", environ_base={"REMOTE_ADDR": "::1"}).status_code == 200
    monkeypatch.setenv("CLINIC_HTTPS", "1")
    app = create_app(get_settings(), engine)
    r = app.test_client().get("/sign-in", environ_base=remote)
    assert r.status_code == 200 and "Secure" in r.headers["Set-Cookie"]
    # a request that came over HTTPS gets a Secure cookie without the setting
    r = screen.test_client().get("/sign-in", base_url="https://localhost")
    assert "Secure" in r.headers["Set-Cookie"]


def test_the_session_secret_is_made_once_and_kept_private(screen, clinic_env, engine, monkeypatch):
    path = clinic_env / "data" / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_text().strip()) >= 60
    key = path.read_text()
    client = signed_in(screen)
    other = create_app(get_settings(), engine)  # another process on the same data folder
    assert path.read_text() == key and other.secret_key == screen.secret_key
    other_client = other.test_client()
    other_client.set_cookie("clinic_session", client.get_cookie("clinic_session").value)
    assert other_client.get(LIST).status_code == 200  # the same session works there
    os.chmod(path, 0o644)
    create_app(get_settings(), engine)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    monkeypatch.setenv("CLINIC_SECRET_KEY", "k" * 40)
    assert create_app(get_settings(), engine).secret_key == "k" * 40
    monkeypatch.setenv("CLINIC_SECRET_KEY", "short")
    with pytest.raises(CannotRun, match="CLINIC_SECRET_KEY is too short"):
        create_app(get_settings(), engine)


def test_sign_in_returns_only_to_pages_of_this_site(screen):
    for target, expected in (("/?day=2026-03-30", "/?day=2026-03-30"), ("//evil.example/", "/"),
                             ("/\\evil.example", "/"), ("https://evil.example/", "/")):
        client = screen.test_client()
        token = token_of(client.get("/sign-in").get_data(as_text=True))
        r = client.post("/sign-in", data={"csrf_token": token, "name": "anna", "password": PASSWORDS["anna"],
                                          "next": target})
        assert r.headers["Location"] == expected, target


def test_the_default_day_is_the_next_clinic_day(screen, engine):
    client = signed_in(screen)
    html = client.get("/").get_data(as_text=True)
    expected = next_clinic_day(engine, today_local(get_settings().clinic_tz))
    assert f'<time datetime="{expected.isoformat()}">' in html
    assert "No call list has been built for this day" in html  # none was built for it


def test_days_around(screen):
    client = signed_in(screen)
    html = client.get(LIST).get_data(as_text=True)
    # Friday before, Tuesday after (a Monday-Friday roster)
    assert '<a class="prev" rel="prev" href="/?day=2026-03-27">' in html
    assert 'href="/?day=2026-03-31"' in html and "Tue 31 Mar" in html
    html = client.get("/?day=2026-04-01").get_data(as_text=True)
    assert r'clinic priorities --day 2026-04-01' in html


def test_print_view(screen):
    client = signed_in(screen)
    client.post(calls_url(101), data={"csrf_token": client.csrf, "outcome": "voicemail"})
    html = client.get("/print?day=2026-03-30").get_data(as_text=True)
    assert html.count('class="tick"') == 6 * 4 and html.count("Note:") == 4
    assert "1 of 4 called, 0 reached when printed" in text(html) and "printed" in text(html)
    assert re.search(r"Voicemail, anna \d+ \w+ \d\d:\d\d", text(html))
    assert "@page" in screen.test_client().get("/static/reception/reception.css").get_data(as_text=True)


def test_recording_commits_then_tells_the_cache_before_the_connection_goes_back(screen, engine, db_url):
    """record_call commits on the pool's DBAPI connection (outside SQLAlchemy's events): its
    on_commit runs after the commit and while the connection is still checked out, so the screen
    drops the list cache before any other request can check it on that connection."""
    from clinic_lib.reception import call_list
    anna = users.require_user(engine, "anna")
    seen_from_elsewhere = []

    def on_commit():
        other = db.make_engine(db_url)
        with other.connect() as conn:  # committed: another connection sees it
            seen_from_elsewhere.append(conn.execute(sa.select(sa.func.count()).select_from(db.call_outcomes)).scalar())
        other.dispose()
        seen_from_elsewhere.append(engine.pool.checkedout())
    rows, progress = call_list.record_call(engine, DAY, 101, anna.user_id, anna.session_epoch, "reached", None,
                                           read_back_since=0, tz=get_settings().clinic_tz, on_commit=on_commit)
    assert seen_from_elsewhere == [1, 1]
    assert [r.appointment_id for r in rows] == [101] and rows[0].latest.recorded_by == "anna"
    assert progress == call_list.Progress(total=4, called=1, spoken_to=1)
    # a refusal writes nothing and calls nothing
    with pytest.raises(call_list.BadInput, match="not on the call list"):
        call_list.record_call(engine, DAY, 301, anna.user_id, anna.session_epoch, "reached", None,
                              on_commit=lambda: seen_from_elsewhere.append("called"))
    with pytest.raises(call_list.NotAllowed):
        call_list.record_call(engine, DAY, 101, anna.user_id, anna.session_epoch + 1, "reached", None)
    assert seen_from_elsewhere == [1, 1] and len(outcomes(engine)) == 1
    # through the screen, the cached page is dropped at once
    cache = screen.extensions["clinic_list_cache"]
    client = signed_in(screen)
    client.get(LIST)
    before = cache.generation
    client.post(calls_url(102), data={"csrf_token": client.csrf, "outcome": "voicemail"})
    assert cache.generation > before
    assert "Voicemail by anna" in text(row_html(client.get(LIST).get_data(as_text=True), 102))


def test_held_out_rows_say_do_not_call(screen, engine):
    """The randomised call holdout's rows: marked on the list and in print, left out of what is
    still to call and of the progress."""
    with engine.begin() as conn:
        conn.execute(sa.update(db.priorities).where(db.priorities.c.appointment_id == 102).values(holdout=1))
    client = signed_in(screen)
    html = client.get(LIST).get_data(as_text=True)
    assert "Hold out: do not call" in text(row_html(html, 102))
    assert all("Hold out" not in text(row_html(html, a)) for a in (101, 103, 104))
    assert "0 of 3 called, 0 reached, 1 held out (not to call)" in text(html)
    assert rows_in(client.get(LIST + "&show=open").get_data(as_text=True)) == [101, 103, 104]
    client.post(calls_url(101), data={"csrf_token": client.csrf, "outcome": "reached"})
    assert "1 of 3 called, 1 reached, 1 held out" in text(client.get(LIST).get_data(as_text=True))
    printed = client.get("/print?day=2026-03-30").get_data(as_text=True)
    assert text(printed).count("HOLD OUT: DO NOT CALL") == 1 and printed.count("Note:") == 3
