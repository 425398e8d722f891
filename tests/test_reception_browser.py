"""Reception's screen as people use it: the real app behind a real waitress server on 127.0.0.1,
driven in Debian's Chromium with Playwright (as test_dashboard_browser.py does the dashboard).

Sign in, see the list, record outcomes (mouse and keyboard only), reload and see them, a second
browser context as another receptionist sees them with the first one's name; wrong password,
locked name, expired session, a disabled account, a forged post without the CSRF token; labels,
focus, contrast and no sideways scrolling at 390 px; the print view on A4. Every request of every
page must go to 127.0.0.1. Screenshots at 390 and 1280 px go to the test's outputs folder and to
the project's outputs/ (reception_screenshot_*.png).
"""
from __future__ import annotations

import re
import shutil
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from clinic_lib.core import db
from clinic_lib.core.config import get_settings
from clinic_lib.reception import users
from clinic_lib.reception.api import create_app, create_server
from clinic_lib.reception.priorities import build_priorities

from reception_data import DAY, PASSWORDS, add_model_scores, add_users, load_clinic

# one worker runs this module: its server and browser are built once for all its tests
pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("test_reception_browser")]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PROJECT_OUTPUTS = get_settings().outputs_dir  # before any test points CLINIC_OUTPUTS_DIR elsewhere
LIST = "/?day=2026-03-30"
# the main test runs on both databases; the others are about the browser, not the database
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

if not Path(CHROMIUM).exists():
    pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium; CI installs it)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Site:
    """The app (the reception clinic, two accounts) behind waitress on a free port of 127.0.0.1;
    every page opened through it records its requests, script errors and dialogs."""

    def __init__(self, engine, browser):
        load_clinic(engine)
        add_model_scores(engine, {101: (0.41, "high"), 102: (0.05, "low")})
        build_priorities(DAY, engine=engine)
        add_users(engine)
        self.engine, self.browser = engine, browser
        self.app = create_app(get_settings(), engine)
        self.server = create_server(self.app, host="127.0.0.1", port=0, threads=4)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.effective_port}"
        self.requests, self.errors, self.dialogs, self.contexts = [], [], [], []

    def _run(self):
        try:
            self.server.run()
        except OSError:  # the listening socket closed under select() at shutdown
            pass

    def page(self, width=1280, height=900):
        context = self.browser.new_context(viewport={"width": width, "height": height})
        self.contexts.append(context)
        page = context.new_page()
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        return page

    def sign_in(self, page, name, password=None, path=LIST):
        page.goto(self.url + path)
        page.fill("#name", name)
        page.fill("#password", password or PASSWORDS[name])
        with page.expect_navigation():
            page.click("form.sign-in button[type=submit]")
        return page

    def close(self):
        for context in self.contexts:
            context.close()
        self.server.close()
        self.thread.join(timeout=5)


@pytest.fixture
def site(engine, clinic_env, browser):
    s = Site(engine, browser)
    yield s
    s.close()


def outcomes(engine):
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            sa.select(db.call_outcomes.c.appointment_id, db.call_outcomes.c.outcome, db.call_outcomes.c.note,
                      db.users.c.name).select_from(db.call_outcomes.outerjoin(
                          db.users, db.users.c.user_id == db.call_outcomes.c.recorded_by))
            .order_by(db.call_outcomes.c.outcome_id))]


def row_text(page, aid) -> str:
    return re.sub(r"\s+", " ", page.inner_text(f"#appt-{aid}"))


def record(page, aid, outcome_label, note=None):
    """Click an outcome of a row (the page's script saves it) and wait for the row to say so."""
    if note is not None:
        page.fill(f"#note-{aid}", note)
    old = page.query_selector(f"#appt-{aid}")
    page.click(f"#appt-{aid} .outcomes button:text-is('{outcome_label}')")
    page.wait_for_function("row => !row.isConnected", arg=old, timeout=10_000)  # the new row is in place
    assert outcome_label in page.inner_text(f"#appt-{aid} .last-call")


def only_local(requests):
    hosts = {u.split("/")[2].rsplit(":", 1)[0] for u in requests if "://" in u and not u.startswith("data:")}
    assert hosts == {"127.0.0.1"}, sorted(u for u in requests if "127.0.0.1" not in u.split("/")[2])


def shot(page, name, tmp_outputs):
    """A full-page screenshot into the test's outputs folder and the project's outputs/."""
    tmp_outputs.mkdir(parents=True, exist_ok=True)
    path = tmp_outputs / f"reception_screenshot_{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    PROJECT_OUTPUTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, PROJECT_OUTPUTS / path.name)
    return path


A11Y_CHECK = """() => {
  const visible = (el) => el.offsetParent !== null || el.getClientRects().length > 0;
  const unlabelled = [];
  for (const el of document.querySelectorAll('input:not([type=hidden]), button, select, textarea')) {
    if (!visible(el) || el.hidden) continue;
    const name = (el.getAttribute('aria-label') || '') || (el.labels && Array.from(el.labels).map(l => l.textContent).join(' ')) || el.textContent;
    if (!name || !name.trim()) unlabelled.push(el.outerHTML.slice(0, 80));
  }
  const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
                               return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const background = (el) => { for (let e = el; e; e = e.parentElement) { const c = rgb(getComputedStyle(e).backgroundColor);
                                 if (c.length === 3 || (c.length === 4 && c[3] > 0.5)) return c.slice(0, 3); }
                               return [255, 255, 255]; };
  let worst = 21, where = '';
  for (const el of document.querySelectorAll('body *')) {
    const own = Array.from(el.childNodes).some(n => n.nodeType === 3 && n.textContent.trim());
    if (!own || !visible(el) || el.closest('.visually-hidden') || el.closest('[hidden]')) continue;
    const style = getComputedStyle(el);
    if (style.visibility === 'hidden' || style.opacity === '0') continue;
    const a = lum(rgb(style.color).slice(0, 3)), b = lum(background(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < worst) { worst = ratio; where = el.outerHTML.slice(0, 100); }
  }
  return {unlabelled, worst, where, scrollWidth: document.documentElement.scrollWidth,
          width: window.innerWidth};
}"""


def check_accessible(page):
    result = page.evaluate(A11Y_CHECK)
    assert result["unlabelled"] == [], result["unlabelled"]
    assert result["worst"] >= 4.5, result  # WCAG AA for body text
    assert result["scrollWidth"] <= result["width"], result  # no sideways scrolling


def test_reception_in_chromium(site, engine, clinic_env):
    """Runs twice (db_url): on a SQLite file and on a Postgres database."""
    anna = site.page()
    site.sign_in(anna, "anna")
    assert anna.url == site.url + LIST
    assert anna.locator("ol.calls > li").count() == 4
    assert anna.inner_text("#progress") == "0 of 4 called, 0 reached"
    assert anna.get_attribute("#appt-101 .phone a", "href") == "tel:+49301234567"
    assert "Missing phone" in row_text(anna, 102) and "Missing consent form" in row_text(anna, 102)
    check_accessible(anna)

    # record without leaving the page: the script puts the new row in place
    anna.evaluate("window.samePage = true")
    record(anna, 102, "Voicemail", note="no answer on the mobile, try after 6")
    assert anna.evaluate("window.samePage") is True and anna.url == site.url + LIST
    assert "Voicemail by anna" in row_text(anna, 102) and "try after 6" in row_text(anna, 102)
    assert anna.inner_text("#progress") == "1 of 4 called, 0 reached"
    assert outcomes(engine) == [(102, "Voicemail".lower(), "no answer on the mobile, try after 6", "anna")]
    anna.reload()
    assert "Voicemail by anna" in row_text(anna, 102)

    # a second receptionist in another browser context sees it, with anna's name
    ben = site.page()
    site.sign_in(ben, "ben")
    assert "Voicemail by anna" in row_text(ben, 102)
    record(ben, 101, "Reached")
    # anna's next action brings ben's outcome onto her page too
    record(anna, 103, "No answer")
    assert "Reached by ben" in row_text(anna, 101)
    assert anna.inner_text("#progress") == "3 of 4 called, 1 reached"
    # both keep their outcomes on the same appointment
    record(ben, 102, "Confirmed")
    assert [o[1:] for o in outcomes(engine) if o[0] == 102] == [
        ("voicemail", "no answer on the mobile, try after 6", "anna"), ("confirmed", None, "ben")]

    anna.click("nav.filters a:text-is('Not yet called')")
    assert [li.get_attribute("id") for li in anna.query_selector_all("ol.calls > li")] == ["appt-104"]
    assert anna.inner_text("#progress") == "3 of 4 called, 2 reached"
    anna.click("nav.filters a:text-is('All')")

    if db.is_sqlite(engine):  # the screenshots (docs/reception_*.png are copies of these)
        tmp_outputs = Path(get_settings().outputs_dir)
        shot(anna, "desktop", tmp_outputs)
        phone = site.page(width=390, height=844)
        site.sign_in(phone, "anna")
        check_accessible(phone)
        shot(phone, "phone", tmp_outputs)

    # HTML in a note is text: nothing runs, the characters show as typed
    note = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
    record(anna, 104, "Rescheduled", note=note)
    assert note in anna.inner_text("#appt-104 .note")
    anna.reload()
    assert note in anna.inner_text("#appt-104 .note") and anna.locator("#appt-104 img").count() == 0
    assert site.dialogs == []

    # the history of a row is one click away
    anna.click("#appt-102 a:has-text('History (2 calls)')")
    history = re.sub(r"\s+", " ", anna.inner_text("table.history"))
    assert re.search(r"Confirmed ben .*Voicemail anna no answer on the mobile", history)
    anna.go_back()

    # the filter: not yet called (none left), then all again
    anna.click("nav.filters a:text-is('Not yet called')")
    assert anna.locator("ol.calls > li").count() == 0 and "Everyone on this list has been called" in anna.content()
    anna.click("nav.filters a:text-is('All')")
    assert anna.locator("ol.calls > li").count() == 4

    only_local(site.requests)
    assert site.errors == []


@SQLITE_ONLY
def test_keyboard_only(site, engine):
    page = site.page()
    page.goto(site.url + LIST)
    page.keyboard.type("anna")  # the name field has the focus
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORDS["anna"])
    with page.expect_navigation():
        page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to the content"
    # Tab to Carla's "Confirmed" (nothing but the keyboard), with a visible focus ring on the way
    for presses in range(200):
        if page.evaluate("document.activeElement.matches('#appt-103 button[value=confirmed]')"):
            break
        page.keyboard.press("Tab")
        outline = page.evaluate("(() => { const s = getComputedStyle(document.activeElement); "
                                "return [s.outlineStyle, parseFloat(s.outlineWidth)]; })()")
        assert outline[0] != "none" and outline[1] >= 2, (presses, outline, page.evaluate("document.activeElement.outerHTML"))
    else:
        raise AssertionError("Tab never reached Carla's Confirmed button")
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.querySelector('#appt-103 .last-call').textContent.includes('Confirmed')")
    assert page.evaluate("document.activeElement.matches('#appt-103 button[value=confirmed]')")
    assert "Saved. Latest call: Confirmed by anna" in page.inner_text("#announce")
    assert outcomes(engine) == [(103, "confirmed", None, "anna")]
    # Enter in a note saves nothing by accident; Shift+Tab back to the note works
    for _ in range(4):  # No answer, Voicemail, Reached, the note
        page.keyboard.press("Shift+Tab")
    assert page.evaluate("document.activeElement.id") == "note-103"
    page.keyboard.type("called back")
    page.keyboard.press("Enter")
    page.wait_for_timeout(500)
    assert outcomes(engine) == [(103, "confirmed", None, "anna")]
    page.keyboard.press("Tab")  # to "Reached"
    page.keyboard.press("Space")
    page.wait_for_function("() => document.querySelector('#appt-103 .last-call').textContent.includes('Reached')")
    assert outcomes(engine)[-1] == (103, "reached", "called back", "anna")
    only_local(site.requests)
    assert site.errors == []


@SQLITE_ONLY
def test_wrong_password_and_locked_name(site):
    page = site.page()
    statuses = []
    page.on("response", lambda r: statuses.append(r.status) if r.url.endswith("/sign-in") else None)
    page.goto(site.url + "/sign-in")
    for attempt in range(5):
        page.fill("#name", "ben")
        page.fill("#password", "not ben's password")
        with page.expect_navigation():
            page.click("form.sign-in button[type=submit]")
        message = page.inner_text("#sign-in-error")
        if attempt < 4:
            assert message == "Wrong name or password."
    assert "Too many wrong passwords in a row: “ben” is locked until" in message
    assert statuses[-5:] == [401, 401, 401, 401, 429]
    page.fill("#password", PASSWORDS["ben"])  # the name field kept "ben"
    with page.expect_navigation():
        page.click("form.sign-in button[type=submit]")
    assert "is locked until" in page.inner_text("#sign-in-error") and statuses[-1] == 429
    assert "/sign-in" in page.url
    only_local(site.requests)


@SQLITE_ONLY
def test_expired_session_and_disabled_account(site, engine):
    anna = site.page()
    site.sign_in(anna, "anna")
    site.app.config["CLINIC_SESSION_IDLE_SECONDS"] = 1
    try:
        time.sleep(1.5)
        anna.click("#appt-101 .outcomes button:text-is('Reached')")
        anna.wait_for_selector("#msg-101 .row-error")
        assert "Your session ended after" in anna.inner_text("#msg-101") and "Nothing was saved." in \
            anna.inner_text("#msg-101")
    finally:
        site.app.config["CLINIC_SESSION_IDLE_SECONDS"] = 30 * 60
    assert outcomes(engine) == []
    with anna.expect_navigation():
        anna.click("#msg-101 a:text-is('Sign in again')")
    assert "/sign-in" in anna.url
    # ben's account is disabled while his page is open
    ben = site.page()
    site.sign_in(ben, "ben")
    users.disable_user(engine, "ben")
    ben.click("#appt-102 .outcomes button:text-is('Reached')")
    ben.wait_for_selector("#msg-102 .row-error")
    assert "This account has been disabled" in ben.inner_text("#msg-102")
    ben.reload()
    assert "/sign-in" in ben.url
    assert outcomes(engine) == []
    only_local(site.requests)


@SQLITE_ONLY
def test_forged_posts_without_the_token_write_nothing(site, engine):
    page = site.page()
    site.sign_in(page, "anna")
    # a request made by a script of the page without the form's token (the session cookie goes along)
    status = page.evaluate("""() => fetch('/days/2026-03-30/appointments/101/calls', {method: 'POST',
        headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: 'outcome=reached'})
        .then(r => r.status)""")
    assert status == 403
    # a form whose token was taken out, submitted as a plain form (no script)
    page.evaluate("""() => { const form = document.querySelector('#appt-102 form.record');
        form.querySelector('input[name=csrf_token]').remove();
        HTMLFormElement.prototype.submit.call(form); }""")
    page.wait_for_load_state()
    assert "security token is missing or wrong" in page.inner_text("main")
    assert outcomes(engine) == []
    only_local(site.requests)


@SQLITE_ONLY
def test_print_view_on_a4(site, tmp_path):
    page = site.page()
    site.sign_in(page, "anna")
    record(page, 101, "Voicemail")
    page.click("nav.filters a:text-is('Print view')")
    assert page.locator("tbody.print-row").count() == 4 and page.locator(".tick").count() == 24
    assert page.is_visible("button[data-print]")  # the script shows the Print button
    page.emulate_media(media="print")
    assert not page.is_visible(".print-controls")
    pdf = page.pdf(format="A4", print_background=False)
    assert pdf[:5] == b"%PDF-" and len(re.findall(rb"/Type\s*/Page\b", pdf)) == 1  # four patients: one page
    shot(page, "print", Path(get_settings().outputs_dir))
    only_local(site.requests)
    assert site.errors == []
