"""Voila, started the way ``clinic dashboard`` needs it: ``python -m clinic_lib.dashboard.server ARGS``.

One fix before Voila runs. Voila executes the dashboard notebook through jupyter_client's asyncio
channels, which wait for a kernel's reply with one ``socket.poll(timeout)``. Here (pyzmq 26 and 27,
jupyter_client 8.6 and 8.10, ipykernel 6.31 and 7.4) that poll sometimes missed its wake-up: the
cell's reply sat in the socket (``zmq.EVENTS`` said POLLIN) while Voila waited the whole cell
timeout, on every second page load (voila-dashboards/voila#1446 describes the same).
Polling in short slices asks the socket again each time, so a missed wake-up costs at most
``POLL_SLICE_SECONDS``. tests/test_dashboard_browser.py loads the page three times in a row.
"""
from __future__ import annotations

import sys
import time

POLL_SLICE_SECONDS = 0.25


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


def main(argv: list[str] | None = None) -> None:
    patch_channel_polling()
    from voila.app import main as voila_main
    sys.argv = ["voila"] + list(sys.argv[1:] if argv is None else argv)
    voila_main()


if __name__ == "__main__":
    main()
