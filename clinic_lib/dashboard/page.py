"""The KPI dashboard: the few pieces ``notebooks/kpi_dashboard.ipynb`` composes, and ``serve``.

The notebook is one call, ``build(day)``; Voila renders it with its code hidden
(``clinic dashboard`` / ``make dashboard``: http://127.0.0.1:8866/). Every step catches its own
errors and shows a short message instead of a traceback; a missing or empty database says what
to do. The page loads nothing but its own server: plotly.js comes from the ``jupyterlab-plotly``
extension that Voila serves, and the Voila template ``clinic`` (``clinic_lib/share``) is Voila's
``lab`` template without its CDN links (Font Awesome, mermaid).

Speed: Voila keeps one *preheated* kernel whose notebook has already run ``prepare()``
(imports, today's outstanding snapshot, the per-day sums of ``likely_window``);
``build`` reuses that work when the data fingerprint is unchanged (``CLINIC_DASHBOARD_PREHEAT=0``
turns preheating off; see ``voila_command``). A filter change recomputes from the per-(day,
physio) sums in memory (``kpi_frames.summary_from``); only days outside them are queried, and without
a preheated kernel the page fetches that window in a thread after its first render.

URL parameters: ``?day=YYYY-MM-DD`` (one day), ``?start=..&end=..`` (a range),
``?physio=<id>``, ``?as_of=YYYY-MM-DD`` (snapshot; default today). Whatever a URL holds reaches
the page as text only: every piece of it is escaped where it becomes HTML (``message_html``
takes HTML, so the notes about a URL are plain text escaped by ``note_html``).
"""
from __future__ import annotations

import datetime as dt
import html
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from clinic_lib.core.config import PROJECT_ROOT, get_settings
from clinic_lib.core.timeutil import today_local
from clinic_lib.dashboard import freshness, kpi_frames, kpis
from clinic_lib.dashboard.state import (
    CHART_CONFIG,
    PLOTLY_MIMETYPE,
    State,
    _friendly,
    compute,
    initial_selection,
    likely_window,
    load_state,
    model_in_practice,
    window,
)
from clinic_lib.dashboard.view import (
    ALL,
    CSS,
    ModelView,
    coverage_note,
    freshness_html,
    message_html,
    model_html,
    note_html,
    query_params,
)

NOTEBOOK = PROJECT_ROOT / "notebooks" / "kpi_dashboard.ipynb"
SHARE_DIR = Path(__file__).resolve().parents[1] / "share"  # holds voila/templates/clinic


def plotly_bundle(figure_json: str) -> dict:
    """What plotly's ``plotly_mimetype`` renderer displays, built from ``fig.to_json()``.

    Not ``fig.show()``: its renderer module imports nbformat, hence jsonschema, whose format
    checker compiles 38 lark grammars on import (rfc3987_syntax): most of every page's first
    render in a new kernel, far more than the figures themselves."""
    import json
    return {PLOTLY_MIMETYPE: {**json.loads(figure_json), "config": CHART_CONFIG}}


class Dashboard:
    """Widgets, cards, charts and the freshness panel; ``refresh()`` recomputes after a change."""

    def __init__(self, state: State, start, end, physio, as_of, note: str = "", settings=None):
        import ipywidgets as w

        self.w = w
        self.state, self.settings = state, settings or get_settings()
        self.as_of = as_of
        self.renders = 0
        self._drawn: dict[str, str | None] = {}  # what each chart shows now
        self._outstanding = None  # by physio, for as_of: computed once
        self._frames = None  # per (day, physio) sums of the current date window
        self._ahead = None  # a Future: the frames of likely_window(as_of), fetched after the first render
        self._busy = False
        self.mode = w.ToggleButtons(options=["Day", "Date range"], value="Day" if start == end else "Date range",
                                    description="Show", style={"button_width": "90px"})
        self.start = w.DatePicker(value=start, description="Day" if start == end else "From")
        self.end = w.DatePicker(value=end, description="To")
        self.physio = w.Dropdown(options=[("All physios", ALL)] + state.physios,
                                 value=ALL if physio is None else physio, description="Physio")
        for widget, cls in ((self.mode, "mode-filter"), (self.start, "start-filter"),
                            (self.end, "end-filter"), (self.physio, "physio-filter")):
            widget.add_class(cls)
        self.end.layout.display = "none" if start == end else None
        self.status = w.HTML()
        self.note = w.HTML(note_html(note))
        self.coverage = w.HTML()  # says where the data ends when the selection is outside it
        self.cards = w.HTML()
        self.charts = {name: w.Output(layout=w.Layout(min_height="300px", border="1px solid #eee"))
                       for name in ("activity", "show_rate", "revenue", "utilization", "outstanding", "risk")}
        for name, out in self.charts.items():
            out.add_class(f"chart-{name}")
        self.freshness = w.HTML()
        # the model in practice: text and two charts, filled once per page (they do not depend on
        # the filters), in the background when the preheated kernel has not computed them
        self.model_text = w.HTML(f'<h3>Model in practice</h3><div class="model-text">Loading…</div>')
        self.model_charts = {name: w.Output(layout=w.Layout(min_height="300px", border="1px solid #eee"))
                             for name in ("model_auc", "model_rates")}
        for name, out in self.model_charts.items():
            out.add_class(f"chart-{name}")
        model_grid = w.GridBox(list(self.model_charts.values()), layout=w.Layout(grid_gap="10px"))
        model_grid.add_class("chart-grid")
        self.model_box = w.VBox([self.model_text, model_grid])
        self.model_box.add_class("model-in-practice")
        header = w.HTML(f'{CSS}<div class="clinic-dash"><h2>{html.escape(self.settings.clinic_name)}</h2>'
                        f'<div class="dash-sub">KPIs as of {as_of} · data from {state.first_day} to '
                        f'{state.last_day}</div></div>')
        # two columns of charts, one on a phone (CSS: .chart-grid)
        grid = w.GridBox(list(self.charts.values()), layout=w.Layout(grid_gap="10px"))
        grid.add_class("chart-grid")
        self.root = w.VBox([header, w.HBox([self.mode, self.start, self.end, self.physio],
                                           layout=w.Layout(flex_flow="row wrap")),
                            self.status, self.note, self.coverage, self.cards, grid, self.model_box,
                            self.freshness])
        self.root.add_class("clinic-dash")
        self.mode.observe(self._on_mode, "value")
        for widget in (self.start, self.end, self.physio):
            widget.observe(lambda change: self.refresh(), "value")

    # -- events
    def _on_mode(self, change):
        single = change["new"] == "Day"
        self.end.layout.display = "none" if single else None
        self.start.description = "Day" if single else "From"
        if single and self.end.value != self.start.value:
            self._busy = True  # one refresh below, not one per widget change
            try:
                self.end.value = self.start.value
            finally:
                self._busy = False
        self.refresh()

    def selection(self):
        start = self.start.value
        end = start if self.mode.value == "Day" else (self.end.value or start)
        if start is None:
            raise ValueError("choose a day")
        if end < start:
            raise ValueError(f"the range ends ({end}) before it starts ({start})")
        return start, end, None if self.physio.value == ALL else self.physio.value

    # -- rendering
    def _set_status(self, state: str, text: str):
        self.status.value = (f'<div class="dash-status" data-state="{state}" data-render="{self.renders}" '
                             f'style="color:#666;font-size:12px">{html.escape(text)}</div>')

    def _show(self, name: str, fig):
        # A chart the change does not touch (tomorrow's risk on a range change, say) stays as it is
        # drawn: redrawing six plotly charts is most of what a filter change costs in the browser.
        try:
            content = fig if isinstance(fig, str) else fig.to_json()
        except Exception:
            content = None
        if content is not None and self._drawn.get(name) == content:
            return
        self._drawn[name] = content
        out = self.charts[name]
        out.clear_output(wait=True)
        with out:
            from IPython.display import HTML, display
            try:
                if isinstance(fig, str):
                    display(HTML(fig))
                else:
                    display(plotly_bundle(content), raw=True)
            except Exception as exc:
                display(HTML(_friendly(f"The chart '{name}'", exc)))

    def refresh(self):
        if self._busy:
            return
        self._busy = True
        t0 = time.perf_counter()
        self.renders += 1
        self._set_status("busy", "Updating…")
        try:
            try:
                start, end, physio = self.selection()
            except ValueError as exc:
                self.cards.value = message_html(html.escape(str(exc)))
                return
            self.coverage.value = note_html(coverage_note(start, end, self.state.first_day, self.state.last_day))
            view = compute(self.state.engine, start, end, physio, self.as_of, self._outstanding,
                           self._frames_for(*window(start, end)))
            self._outstanding, self._frames = view.outstanding_by_physio, view.frames
            self._offer_physios(view.physios_in_period)
            self.cards.value = view.cards_html
            for name, fig in view.figures.items():
                self._show(name, fig)
        except Exception as exc:
            self.cards.value = _friendly("The dashboard", exc)
        finally:
            self._busy = False
            self._set_status("ready", f"Updated in {time.perf_counter() - t0:.2f} s")

    def _offer_physios(self, present: set | None) -> None:
        """The physio filter lists the physios of the range (and the one chosen, whatever it is)."""
        if present is None:
            return
        chosen = self.physio.value
        options = [("All physios", ALL)] + [(n, i) for n, i in self.state.physios if i in present or i == chosen]
        if list(self.physio.options) != options:
            self.physio.options = options  # inside refresh(): the observers see _busy and return
            self.physio.value = chosen

    def fetch_ahead(self):
        """Fetch the frames of likely_window in a thread while the owner reads the first page
        (the databases work outside the GIL); a later range change inside it queries nothing."""
        ahead = likely_window(self.as_of)
        have = self._frames
        if have is not None and have.covers(*ahead, self.as_of):
            return
        from concurrent.futures import ThreadPoolExecutor
        pool = ThreadPoolExecutor(max_workers=1)
        self._ahead = (ahead, pool.submit(kpi_frames.frames_covering, self.state.engine, have, *ahead, self.as_of))
        pool.shutdown(wait=False)

    def _frames_for(self, start, end):
        """The cached frames, or the ones fetched ahead: when they are ready, or when this window
        needs days the cached ones lack and the fetch holds them (a physio change never waits)."""
        have = self._frames
        covered = have is not None and have.covers(start, end, self.as_of)
        if self._ahead is not None:
            (a_start, a_end), future = self._ahead
            if future.done() or (not covered and a_start <= start and end <= a_end):
                self._ahead = None
                try:
                    fetched = future.result()
                    if have is None or fetched.covers(have.start, have.end, have.as_of):
                        return fetched
                except Exception:
                    pass  # fetched ahead only to save time: the refresh queries what it needs
        return self._frames

    def show_model(self, view: ModelView):
        """Fill the "Model in practice" section. Safe from another thread: it sets widget state
        only (an Output's ``outputs``, not a ``with out:`` block, which captures per thread)."""
        self.model_text.value = model_html(view)
        from clinic_lib.dashboard import plots
        figures = {}
        if len(view.weekly):
            figures = {"model_auc": lambda: plots.model_auc(view.weekly, view.holdout_auc),
                       "model_rates": lambda: plots.model_rates(view.weekly)}
        for name, out in self.model_charts.items():
            out.layout.display = None if name in figures else "none"
            if name not in figures:
                continue
            try:
                bundle = plotly_bundle(figures[name]().to_json())
                out.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)
            except Exception as exc:
                out.outputs = ({"output_type": "display_data", "metadata": {},
                                "data": {"text/html": _friendly(f"The chart '{name}'", exc)}},)

    def fetch_model(self):
        """Compute the model section in a thread after the first render (a 20x clinic's twelve
        weeks of scores take about a second) and fill it when done."""
        import threading

        def work():
            try:
                self.show_model(model_in_practice(self.state.engine, self.as_of, self.settings))
            except Exception as exc:
                self.model_text.value = '<h3>Model in practice</h3>' + _friendly("The model's figures", exc)
        threading.Thread(target=work, daemon=True, name="model-in-practice").start()

    def show_freshness(self):
        try:
            self.freshness.value = freshness_html(freshness.freshness(self.state.engine, self.settings), self.settings)
        except Exception as exc:
            self.freshness.value = _friendly("The freshness panel", exc)


@dataclass
class Warm:
    """Request-independent work done ahead (in a preheated kernel): today's outstanding snapshot."""
    as_of: dt.date
    fingerprint: tuple
    outstanding_by_physio: object
    frames: kpi_frames.Frames | None = None  # the default selection's window (no URL parameters)
    model: ModelView | None = None  # the "Model in practice" section as of today


def data_fingerprint(engine) -> tuple:
    """Cheap evidence that the data did not change: every load/refresh logs an etl_runs row;
    payment and appointment counts catch writes made another way."""
    with engine.connect() as conn:
        return tuple(conn.execute(sa.text(
            "SELECT (SELECT MAX(run_id) FROM etl_runs), (SELECT COUNT(*) FROM payments), "
            "(SELECT MAX(payment_id) FROM payments), (SELECT COUNT(*) FROM appointments)")).one())


def prepare() -> Warm | None:
    """Everything a page needs that does not depend on its URL: imports, plotly's first-figure
    cost, the outstanding snapshot as of today and the per-day sums of ``likely_window``. Voila
    runs it before the request arrives (preheated kernels); without preheating it returns None
    and the page does that work itself."""
    try:
        if os.environ.get("VOILA_PREHEAT", "False") == "False":
            return None  # rendering now anyway: build() runs the queries (outstanding in parallel)
        from clinic_lib.dashboard import plots
        plots.warm_up()
        settings = get_settings()
        state = load_state(settings)
        if state.engine is None or state.first_day is None:
            return None
        as_of = today_local(settings.clinic_tz)
        fingerprint = data_fingerprint(state.engine)
        start, end, *_ = initial_selection({}, state, as_of)
        (w_start, w_end), (a_start, a_end) = window(start, end), likely_window(as_of)
        frames = kpi_frames.frames(state.engine, min(w_start, a_start), max(w_end, a_end), as_of)
        try:
            model = model_in_practice(state.engine, as_of, settings)
        except Exception:
            traceback.print_exc(file=sys.stderr)
            model = None  # the page computes it itself
        return Warm(as_of, fingerprint, kpis.outstanding(state.engine, as_of, by_physio=True), frames, model)
    except Exception:
        traceback.print_exc(file=sys.stderr)
        return None


def _voila_request_info(poll: float = 5.0, max_failures: int = 12) -> dict | None:
    """A preheated kernel's wait for its page request: Voila's /voila/query/<kernel> websocket.

    Like ``voila.utils.wait_for_request`` but robust: each wait lasts ``poll`` seconds, then the
    socket is opened again. Voila keeps the request info of a kernel and sends it on every open,
    so a message lost in a race (a page left waiting) arrives with the next open."""
    import asyncio
    import json
    import threading

    import websockets

    protocol = os.getenv("VOILA_WS_PROTOCOL", "ws")
    ip = os.getenv("VOILA_APP_IP", "127.0.0.1")
    port = os.getenv("VOILA_APP_PORT", "8866")
    base = os.getenv("VOILA_WS_BASE_URL", os.getenv("VOILA_SERVER_URL", "/"))
    url = f"{protocol}://{ip}:{port}{base}voila/query/{os.getenv('VOILA_KERNEL_ID', '')}"
    result: dict = {}

    async def once():
        async with websockets.connect(url, open_timeout=5) as ws:
            return await asyncio.wait_for(ws.recv(), timeout=poll)

    def loop():
        failures = 0
        while failures < max_failures:
            try:
                result["info"] = json.loads(asyncio.new_event_loop().run_until_complete(once()))
                return
            except (asyncio.TimeoutError, TimeoutError):
                continue  # no request yet (or a lost message): open again
            except Exception:
                failures += 1
                time.sleep(1)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    thread.join()
    return result.get("info")


def request_query_string() -> str:
    """The page's query string: Voila's preheated kernel waits here for the request."""
    if os.environ.get("VOILA_PREHEAT", "False") != "False":
        try:
            info = _voila_request_info()
            if info:
                for key, value in info.items():
                    os.environ[key] = str(value)
        except Exception:
            traceback.print_exc(file=sys.stderr)
    return os.environ.get("QUERY_STRING", "")


def build(day=None, query_string: str | None = None, warm: Warm | None = None):
    """The whole page as one widget (or a friendly message); never raises."""
    import ipywidgets as w
    try:
        settings = get_settings()
        state = load_state(settings)
        if state.engine is None or state.first_day is None:
            parts = [CSS, message_html(state.message or "No data.")]
            if state.engine is not None:
                try:
                    parts.append(freshness_html(freshness.freshness(state.engine, settings), settings))
                except Exception:
                    pass
            return w.HTML('<div class="clinic-dash">' + "".join(parts) + "</div>")
        today = today_local(settings.clinic_tz)
        start, end, physio, as_of, note = initial_selection(query_params(query_string), state, today, day)
        app = Dashboard(state, start, end, physio, as_of, note, settings)
        model = None
        if warm is not None and warm.as_of == as_of:
            try:
                if data_fingerprint(state.engine) == warm.fingerprint:
                    app._outstanding, app._frames, model = warm.outstanding_by_physio, warm.frames, warm.model
            except Exception:
                pass
        app.refresh()
        app.show_freshness()
        if model is not None:
            app.show_model(model)
        else:
            app.fetch_model()
        app.fetch_ahead()
        return app.root
    except Exception as exc:
        return w.HTML(CSS + _friendly("The dashboard", exc))


# --- serving ------------------------------------------------------------------------------

def voila_command(port: int | None = None, host: str = "127.0.0.1", notebook: Path | None = None) -> list[str]:
    """The Voila command line: our template, no tracebacks, the cell timeout; clinic_lib.dashboard.server
    adds the bound on visitors' kernels and ends the unused ones (docs/dashboard.md)."""
    settings = get_settings()
    port = port or settings.dashboard_port
    # Preheating (on unless CLINIC_DASHBOARD_PREHEAT=0) takes the kernel's start, the imports and
    # the queries that do not depend on the URL out of the page's first render; the waiting
    # kernel holds ~200 MB.
    preheat = os.environ.get("CLINIC_DASHBOARD_PREHEAT", "1").lower() not in ("0", "false", "no", "off")
    return [sys.executable, "-m", "clinic_lib.dashboard.server", str(notebook or NOTEBOOK),
            "--no-browser", f"--port={port}", f"--Voila.ip={host}", "--Voila.port_retries=0",
            "--template=clinic", "--theme=light",
            # a URL cannot pick another template or theme (the lab template loads from CDNs)
            "--VoilaConfiguration.allow_template_override=NO", "--VoilaConfiguration.allow_theme_override=NO",
            "--VoilaConfiguration.show_tracebacks=False", "--VoilaConfiguration.strip_sources=True",
            f"--VoilaExecutor.timeout={int(settings.dashboard_cell_timeout)}",
            # With preheating, one kernel waits with the notebook's request-independent part
            # already run (dashboard.prepare); the page's own part runs when the request arrives.
            f"--VoilaConfiguration.preheat_kernel={preheat}", f"--VoilaConfiguration.default_pool_size={int(preheat)}"]


def voila_env(base: dict | None = None) -> dict:
    """The environment for Voila: our template folder first on JUPYTER_PATH."""
    env = dict(os.environ if base is None else base)
    env["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(SHARE_DIR), env.get("JUPYTER_PATH", "")) if p)
    return env


def serve(port: int | None = None, host: str = "127.0.0.1", notebook: Path | None = None) -> None:
    """Run Voila on the dashboard notebook (replaces this process; Ctrl-C stops it)."""
    port = port or get_settings().dashboard_port
    cmd = voila_command(port, host, notebook)
    print(f"Clinic Ops dashboard on http://{host}:{port}/  (Ctrl-C to stop)", flush=True)
    env = voila_env()
    if host not in ("0.0.0.0", "::", ""):
        env["VOILA_APP_IP"] = host  # where a preheated kernel asks Voila for the page's URL
    os.execve(sys.executable, cmd, env)
