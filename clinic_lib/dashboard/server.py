"""Voila, started the way ``clinic dashboard`` needs it: ``python -m clinic_lib.dashboard.server ARGS``.

Voila itself, with these changes made before it starts (docs/dashboard.md tells the user's side):

- **Polling in slices.** Voila executes the dashboard notebook through jupyter_client's asyncio
  channels, which wait for a kernel's reply with one ``socket.poll(timeout)``. Here (pyzmq 26 and
  27, jupyter_client 8.6 and 8.10, ipykernel 6.31 and 7.4) that poll sometimes missed its wake-up:
  the cell's reply sat in the socket while Voila waited the whole cell timeout
  (voila-dashboards/voila#1446 describes the same). Polling in short slices asks the socket again
  each time, so a missed wake-up costs at most ``POLL_SLICE_SECONDS``.
- **A preheated kernel waits for its visitor without a clock running.** The preheated kernel runs
  the notebook up to the cell tagged ``waits-for-visitor`` (``dashboard.request_query_string``)
  and waits there until a page request comes, however long that takes; Voila's cell timeout
  would otherwise end that wait after ``CLINIC_DASHBOARD_CELL_TIMEOUT`` seconds and the next
  visitor would get "Cell execution timed out" instead of the dashboard. The cells after it (the
  page's own work) keep the timeout.
- **The page's request reaches its kernel.** Voila hands a preheated kernel its page's URL over a
  websocket (``RequestInfoSocketHandler``) that the kernel opens and re-opens while it waits.
  Voila loses a request info written to a socket that is just closing (the page then waits out
  the cell timeout), and closing one socket can unregister another kernel's. Here the request
  info is also kept until the kernel ends, so the kernel's next open receives it, and a closing
  socket unregisters only itself.
- **Visitors' kernels are bounded** (``VisitorGate``): at most ``CLINIC_DASHBOARD_MAX_VISITORS``
  at once, beyond that a polite "busy, retry in a minute" page (HTTP 503 with Retry-After, and it
  retries by itself); a kernel whose page is gone (no browser connection for
  ``closed_page_seconds``) or that saw no use for ``CLINIC_DASHBOARD_IDLE_MINUTES`` is shut
  down. Voila's own "shut down on page close" (a beacon the page sends on ``beforeunload``)
  works once the page has its ``_xsrf`` cookie, which this sets; the reaper catches the pages
  that never send it (a phone putting the browser away, a crash).
"""
from __future__ import annotations

import contextvars
import datetime as dt
import sys
import time

POLL_SLICE_SECONDS = 0.25
WAITS_FOR_VISITOR_TAG = "waits-for-visitor"  # the notebook cell that waits for the page request
CLOSED_PAGE_SECONDS = 60.0  # a visitor's kernel without any browser connection this long ends
REAP_INTERVAL_SECONDS = 5.0
BUSY_RETRY_SECONDS = 60


def patch_channel_polling() -> None:
    """Make ``AsyncZMQSocketChannel.get_msg`` poll in slices (same contract: a message or Empty)."""
    from queue import Empty

    from jupyter_client.channels import AsyncZMQSocketChannel

    if getattr(AsyncZMQSocketChannel.get_msg, "_sliced", False):
        return

    async def get_msg(self, timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = POLL_SLICE_SECONDS if deadline is None else min(POLL_SLICE_SECONDS, deadline - time.monotonic())
            if await self.socket.poll(max(0, int(left * 1000))):
                return await self._recv()
            if deadline is not None and time.monotonic() >= deadline:
                raise Empty

    get_msg._sliced = True
    AsyncZMQSocketChannel.get_msg = get_msg


def waits_for_visitor(cell) -> bool:
    return WAITS_FOR_VISITOR_TAG in (cell.get("metadata", {}).get("tags") or [])


def patch_visitor_wait_timeout() -> None:
    """No cell timeout for the cell that waits for the page request (see the module docstring)."""
    from voila.execute import VoilaExecutor

    original = VoilaExecutor._get_timeout
    if getattr(original, "_visitor_aware", False):
        return

    def _get_timeout(self, cell):
        if cell is not None and waits_for_visitor(cell):
            return None
        return original(self, cell)

    _get_timeout._visitor_aware = True
    VoilaExecutor._get_timeout = _get_timeout


def patch_request_info_socket() -> None:
    """Keep each kernel's request info until the kernel ends; a closing socket unregisters itself only."""
    import logging

    from voila.request_info_handler import RequestInfoSocketHandler as Handler

    if getattr(Handler, "_clinic_patched", False):
        return

    def send_updates(cls, msg):
        kernel_id, payload = msg["kernel_id"], msg["payload"]
        cls._cache[kernel_id] = payload  # a write lost with a closing socket: the next open repairs it
        waiter = cls._waiters.get(kernel_id)
        if waiter is not None:
            try:
                waiter.write_message(payload)
            except Exception:
                logging.getLogger("voila").warning("request info for kernel %s: the socket refused it; "
                                                   "the kernel's next open receives it", kernel_id)

    def on_close(self):
        for kernel_id, waiter in list(Handler._waiters.items()):
            if waiter is self:
                del Handler._waiters[kernel_id]

    Handler.send_updates = classmethod(send_updates)
    Handler.on_close = on_close
    Handler._clinic_patched = True


def forget_request_info(kernel_id: str) -> None:
    from voila.request_info_handler import RequestInfoSocketHandler as Handler
    Handler._cache.pop(kernel_id, None)


# --- visitors' kernels: how many, and for how long --------------------------------------------

_reservation: contextvars.ContextVar = contextvars.ContextVar("clinic_visitor_reservation", default=None)


class VisitorGate:
    """Counts the kernels of pages being served or open, and refuses a visitor beyond ``max_visitors``.

    A request is admitted with a reservation, which becomes a visitor kernel when the request gets
    its kernel (a preheated one or a new one); a request still on its way to a kernel counts too,
    so visitors who arrive together cannot overshoot the bound. The preheated kernel waiting for
    the next visitor is not a visitor's (it comes on top: ``max_visitors + 1`` kernels at most).
    """

    def __init__(self, max_visitors: int, idle_seconds: float, closed_page_seconds: float):
        self.max_visitors = max_visitors
        self.idle_seconds = idle_seconds
        self.closed_page_seconds = min(closed_page_seconds, idle_seconds)
        self.kernels: set[str] = set()
        self.pending = 0

    def in_use(self, alive) -> int:
        self.kernels &= set(alive)
        return len(self.kernels) + self.pending

    def admit(self, alive) -> bool:
        if self.in_use(alive) >= self.max_visitors:
            return False
        self.pending += 1
        _reservation.set([True])
        return True

    def release_reservation(self) -> None:
        token = _reservation.get()
        if token and token[0]:
            token[0] = False
            self.pending -= 1

    def register(self, kernel_id: str) -> None:
        """The admitted request got ``kernel_id``."""
        self.kernels.add(kernel_id)
        self.release_reservation()

    def to_end(self, km, now: dt.datetime) -> list[str]:
        """The visitors' kernels whose page is gone or unused."""
        out = []
        for kernel_id in list(self.kernels):
            if kernel_id not in km:
                self.kernels.discard(kernel_id)
                continue
            last = getattr(km.get_kernel(kernel_id), "last_activity", None)
            if last is None:
                continue
            idle = (now - last).total_seconds()
            connected = km._kernel_connections.get(kernel_id, 0) > 0
            if idle > self.idle_seconds or (not connected and idle > self.closed_page_seconds):
                out.append(kernel_id)
        return out


def busy_page(gate: VisitorGate) -> str:
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{BUSY_RETRY_SECONDS}">
<title>Dashboard busy</title>
<style>body {{ font-family: sans-serif; max-width: 36em; margin: 3em auto; padding: 0 1em; color: #222; }}
.busy {{ border-left: 4px solid #f0ad4e; background: #fff8e6; padding: 12px 16px; border-radius: 4px; }}</style>
</head><body><div class="busy" data-dashboard="busy">
<h1>The dashboard is busy</h1>
<p>{gate.max_visitors} {'page has' if gate.max_visitors == 1 else 'pages have'} the dashboard open right now,
as many as this machine serves at once. Please retry in a minute: this page tries again by itself
in {BUSY_RETRY_SECONDS} seconds.</p>
<p>An open dashboard that nobody uses frees its place after a few minutes; closing a tab frees it at once.</p>
</div></body></html>"""


def install_visitor_gate(gate: VisitorGate) -> None:
    """Wire ``gate`` into Voila: its page handler, its kernel managers and a periodic reaper."""
    import voila.app
    from tornado.ioloop import PeriodicCallback
    from voila.tornado.handler import TornadoVoilaHandler

    original_factory = voila.app.voila_kernel_manager_factory

    def factory(base_class, preheat_kernel, default_pool_size, page_config_hook=None):
        voila_class = original_factory(base_class, preheat_kernel, default_pool_size, page_config_hook)

        class ClinicKernelManager(voila_class):
            """Voila's kernel manager that tells the gate which kernels are visitors'."""

            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                self.visitor_gate = gate
                self._reaper = PeriodicCallback(self._end_unused_kernels, REAP_INTERVAL_SECONDS * 1000)
                self._reaper.start()

            async def get_rendered_notebook(self, *args, **kwargs):
                result = await super().get_rendered_notebook(*args, **kwargs)
                gate.register(result[2])  # (render task, rendered cells, kernel id)
                return result

            async def start_kernel(self, *args, **kwargs):
                # Only the page handler calls this directly; Voila's pool starts its preheated
                # kernels through super() of its own class, which skips this method.
                kernel_id = await super().start_kernel(*args, **kwargs)
                gate.register(kernel_id)
                return kernel_id

            async def shutdown_kernel(self, kernel_id, *args, **kwargs):
                gate.kernels.discard(kernel_id)
                forget_request_info(kernel_id)
                return await super().shutdown_kernel(kernel_id, *args, **kwargs)

            async def _end_unused_kernels(self):
                now = dt.datetime.now(dt.timezone.utc)
                for kernel_id in gate.to_end(self, now):
                    self.log.info("Ending the unused dashboard kernel %s", kernel_id)
                    try:
                        await self.shutdown_kernel(kernel_id)
                    except Exception:
                        self.log.exception("Could not end kernel %s", kernel_id)

        return ClinicKernelManager

    voila.app.voila_kernel_manager_factory = factory

    original_get = TornadoVoilaHandler.get

    async def get(self, path=None):
        if not gate.admit(self.kernel_manager.list_kernel_ids()):
            self.set_status(503)
            self.set_header("Retry-After", str(BUSY_RETRY_SECONDS))
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.set_header("Cache-Control", "no-store")
            self.finish(busy_page(gate))
            return
        # The page's "shut my kernel down" beacon (sent when the tab closes) carries the _xsrf
        # cookie, which Voila itself never sets: without it the server refuses every beacon (403)
        # and each visit's kernel stays until ended otherwise. Reading xsrf_token sets the cookie.
        self.xsrf_token
        try:
            return await original_get(self, path)
        finally:
            gate.release_reservation()  # a request that failed before it had a kernel

    TornadoVoilaHandler.get = get


def main(argv: list[str] | None = None) -> None:
    from clinic_lib.core.config import get_settings

    settings = get_settings()
    patch_channel_polling()
    patch_visitor_wait_timeout()
    patch_request_info_socket()
    install_visitor_gate(VisitorGate(settings.dashboard_max_visitors, settings.dashboard_idle_minutes * 60,
                                     CLOSED_PAGE_SECONDS))
    from voila.app import main as voila_main
    sys.argv = ["voila"] + list(sys.argv[1:] if argv is None else argv)
    voila_main()


if __name__ == "__main__":
    main()
