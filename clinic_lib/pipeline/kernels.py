"""The notebook kernels of a run: reached over IPC where the platform has it, stopped with the run.

papermill starts one kernel per notebook step (jupyter_client). Two things about that kernel
matter to an evening run:

- **Transport.** By default jupyter_client talks to the kernel over TCP on localhost, unencrypted,
  and the kernel says so ("Kernel is running over TCP without encryption") in the user's terminal
  at every step. ``RunKernelManager`` uses Unix domain sockets (zmq's ``ipc``) in a private folder
  instead, where zmq has them and the path fits; elsewhere it stays on TCP with CurveZMQ keys the
  manager provisions (encrypted, so the kernel has nothing to warn about), where the installed
  jupyter_client and zmq can; else plain TCP, warning included.
- **Stopping.** jupyter_client starts each kernel in a session of its own (so that an interrupt
  reaches the kernel's whole process group): a SIGTERM to ``run_daily.py``, even to its process
  group, does not reach the kernel, which would go on and could commit a refresh after the run
  lock was let go. Every kernel a ``RunKernelManager`` starts is registered here;
  ``stop_kernels()`` kills their process groups and waits until they are gone, and
  ``stopping_kernels_on_signals()`` does that when the run gets SIGTERM, SIGINT or SIGHUP, before
  the run exits and so before its lock is released.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time

from jupyter_client.manager import AsyncKernelManager
from traitlets import default

# A Unix socket path has room for about 104 bytes (macOS; 108 on Linux); the sockets are
# "<folder>/k-<n>".
_MAX_SOCKET_PATH = 100
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name))

_lock = threading.RLock()  # re-entered by a signal handler that interrupts a holder
_running: dict[int, "RunKernelManager"] = {}  # kernel pid -> its manager


def ipc_available() -> bool:
    import zmq
    return os.name == "posix" and zmq.has("ipc")


def curve_available() -> bool:
    """Can the manager give the kernel CurveZMQ keys (jupyter_client 8.10 and a zmq with curve)?"""
    import zmq
    return AsyncKernelManager.class_traits().get("transport_encryption") is not None and zmq.has("curve")


class RunKernelManager(AsyncKernelManager):
    """A kernel manager that uses IPC where it can and registers its kernel for ``stop_kernels``."""

    _ipc_dir: str | None = None

    @default("transport")
    def _default_transport(self) -> str:
        if ipc_available():
            folder = tempfile.mkdtemp(prefix="clinic-kernel-")
            if len(os.path.join(folder, "k-99")) <= _MAX_SOCKET_PATH:
                self._ipc_dir = folder
                return "ipc"
            os.rmdir(folder)
        return "tcp"

    @default("transport_encryption")  # a trait of jupyter_client 8.10 on; ignored before
    def _default_transport_encryption(self) -> str:
        return "required" if self.transport == "tcp" and curve_available() else "disabled"

    @default("ip")
    def _ip_default(self) -> str:
        # An absolute path of our own: the kernel (cwd notebooks/) and this process find the
        # same sockets, and two kernels never share one.
        if self.transport == "ipc" and self._ipc_dir:
            return os.path.join(self._ipc_dir, "k")
        return super()._ip_default()

    async def _async_interrupt_kernel(self) -> None:
        # jupyter_client interrupts a kernel before it asks it to shut down; papermill shuts a
        # kernel down when it is idle, and an interrupt that lands in one of its message handlers
        # prints "KeyboardInterrupt caught in kernel" in the user's terminal
        if self.shutting_down:
            return
        await super()._async_interrupt_kernel()

    async def _async_launch_kernel(self, kernel_cmd, **kw) -> None:
        await super()._async_launch_kernel(kernel_cmd, **kw)
        pid = getattr(self.provisioner, "pid", None)
        if pid:
            with _lock:
                _running[pid] = self

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        self._forget()
        await super()._async_cleanup_resources(restart=restart)
        if not restart:
            self._remove_ipc_dir()

    def _forget(self) -> None:
        with _lock:
            for pid, manager in list(_running.items()):
                if manager is self:
                    del _running[pid]

    def _remove_ipc_dir(self) -> None:
        if self._ipc_dir:
            shutil.rmtree(self._ipc_dir, ignore_errors=True)


def running_kernels() -> list[int]:
    """The pids of the kernels started and not yet shut down."""
    with _lock:
        return list(_running)


def stop_kernels(timeout: float = 10.0) -> list[int]:
    """Kill every running kernel's process group and wait until the kernels are gone.

    SIGKILL: a kernel in the middle of a transaction must not finish it (the database rolls an
    unfinished transaction back). Returns the pids stopped.
    """
    with _lock:
        running = dict(_running)
        _running.clear()
    for pid, manager in running.items():
        if hasattr(os, "killpg"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # the kernel leads its own session and process group
        else:  # no process groups (Windows): the kernel process itself
            with contextlib.suppress(Exception):
                manager.provisioner.process.kill()
    deadline = time.monotonic() + timeout
    for pid, manager in running.items():
        while time.monotonic() < deadline and not _reaped(pid, manager):
            time.sleep(0.01)
        with contextlib.suppress(Exception):
            manager.cleanup_connection_file()
            manager.cleanup_ipc_files()
        manager._remove_ipc_dir()
    return list(running)


def _reaped(pid: int, manager: RunKernelManager) -> bool:
    if not hasattr(os, "WNOHANG"):
        return manager.provisioner.process.poll() is not None
    try:
        # the kernel is this process's child: waitpid reaps it (Popen's own lock may be held by
        # the code the signal interrupted, so not through Popen)
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True  # reaped already
    return done == pid


class RunStopped(BaseException):
    """The run got a stop signal (after its kernels were stopped). A BaseException, like
    KeyboardInterrupt: no ``except Exception`` on the way (papermill, the runner's step
    handling) records it as a failed step."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(signal.Signals(signum).name)


@contextlib.contextmanager
def stopping_kernels_on_signals():
    """Within the block, SIGTERM/SIGINT/SIGHUP stop the running kernels first and then raise
    ``RunStopped`` in the main thread; the previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum, frame):
        for sig in STOP_SIGNALS:  # a second signal while stopping changes nothing
            signal.signal(sig, signal.SIG_IGN)
        stop_kernels()
        raise RunStopped(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stopped_message(exc: RunStopped, what: str) -> str:
    return (f"stopped by {exc} during {what}; its notebook kernel was stopped before the run lock "
            "was let go (a refresh is applied whole or not at all). Run the day again: --resume "
            "skips the steps that finished")
