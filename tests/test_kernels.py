"""The kernels of the notebook steps: IPC where the platform has it (else TCP with CurveZMQ keys),
so a clean run prints only its progress; and stop_kernels leaves no kernel behind."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

import nbformat
import pytest

from clinic_lib.core.config import PROJECT_ROOT
from clinic_lib.pipeline import kernels, runner

TCP_WARNING = "Kernel is running over TCP without encryption"


def _notebook(tmp_path, source: str):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    return path


def _run(tmp_path):
    out = tmp_path / "out.ipynb"
    runner.execute_notebook(_notebook(tmp_path, "print(6 * 7)"), out, {}, progress=False)
    return nbformat.read(out, as_version=4).cells[-1].outputs[0]["text"]


def test_ipc_transport_where_the_platform_has_it():
    manager = kernels.RunKernelManager(kernel_name="python3")
    assert kernels.ipc_available()  # Linux and macOS
    assert manager.transport == "ipc" and os.path.isabs(manager.ip)
    manager._remove_ipc_dir()


@pytest.mark.parametrize("ipc, curve, warned", [(True, True, False), (False, True, False), (False, False, True)],
                         ids=["ipc", "tcp-with-curve", "plain-tcp"])
def test_kernel_warning_only_on_plain_tcp(tmp_path, capfd, monkeypatch, ipc, curve, warned):
    """The kernel writes its warning to the terminal (file descriptor 2), which capfd sees; plain
    TCP (neither IPC nor Curve) shows that the check would catch it."""
    monkeypatch.setattr(kernels, "ipc_available", lambda: ipc)
    monkeypatch.setattr(kernels, "curve_available", lambda: curve)
    if curve and not ipc and not kernels.AsyncKernelManager.class_traits().get("transport_encryption"):
        pytest.skip("this jupyter_client cannot provision CurveZMQ keys")
    assert _run(tmp_path) == "42\n"
    assert (TCP_WARNING in capfd.readouterr().err) == warned
    assert kernels.running_kernels() == []  # shut down and forgotten


def test_clean_run_prints_only_its_progress(tmp_path):
    from clinic_lib.core import db
    from clinic_lib.core.migrate import migrate

    from drops import write_day_drop
    url = f"sqlite:///{tmp_path / 'clinic.db'}"
    migrate(db.make_engine(url))
    write_day_drop(tmp_path / "data")
    env = {**os.environ, "CLINIC_DATA_DIR": str(tmp_path / "data"), "CLINIC_OUTPUTS_DIR": str(tmp_path / "outputs"),
           "DATABASE_URL": url, "CLINIC_TZ": "Europe/Berlin"}
    out = subprocess.run([sys.executable, str(PROJECT_ROOT / "run_daily.py"), "--quiet", "--day", "2026-02-10",
                          "--steps", "validate,refresh"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.strip().splitlines()
    progress = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO 2026-02-10 (validate|refresh): (start|ok in \d+\.\d s)")
    assert [progress.match(line) and progress.match(line).groups()[0] + " " + progress.match(line).groups()[1][:5]
            for line in lines] == ["validate start", "validate ok in", "refresh start", "refresh ok in"], out.stderr
    assert not list((tmp_path / "outputs").glob("**/*-ipc-*"))


def test_stop_kernels_kills_a_busy_kernel(tmp_path):
    """A kernel busy in a cell: stop_kernels kills it (and its process group) and waits for it."""
    marker = tmp_path / "pid"
    nb = _notebook(tmp_path, f"import os, time\nopen({str(marker)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)")
    failed = []

    def run():
        try:
            runner.execute_notebook(nb, tmp_path / "out.ipynb", {}, progress=False)
        except Exception as exc:  # the kernel died under it
            failed.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.time() + 120
    while not (marker.exists() and marker.read_text()):
        assert time.time() < deadline and worker.is_alive()
        time.sleep(0.05)
    kernel = int(marker.read_text())
    assert kernels.running_kernels() == [kernel]
    assert kernels.stop_kernels() == [kernel]
    with pytest.raises(ProcessLookupError):
        os.kill(kernel, 0)
    worker.join(60)
    assert not worker.is_alive() and failed


def test_kernels_shut_down_without_a_word(tmp_path, capfd):
    """papermill shuts each kernel down when it is idle: no interrupt first, so the kernel never
    prints "KeyboardInterrupt caught in kernel" (it did on about one shutdown in ten)."""
    for _ in range(10):
        assert _run(tmp_path) == "42\n"
    assert capfd.readouterr().err == ""
