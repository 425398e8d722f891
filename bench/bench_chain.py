"""The whole evening in one command: wall time of run_daily's chain, papermill included.

Targets: the full chain for one day at 1x <= 20 s (and how much of it is kernel start-up);
a 30-day backfill at 1x <= 3 min; the full chain at 20x <= 60 s.
    python bench/bench_chain.py [--scales 1,20]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import CACHE, loaded_sqlite, table  # noqa: E402


def use_outputs(folder: Path, url: str, data: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ.update({"DATABASE_URL": url, "CLINIC_OUTPUTS_DIR": str(folder), "CLINIC_DATA_DIR": str(data)})


def kernel_start_seconds(repeat: int = 3) -> float:
    """papermill on a one-cell notebook: what each step pays before its own work."""
    import nbformat
    from clinic_lib.pipeline.runner import execute_notebook
    with tempfile.TemporaryDirectory() as tmp:
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]})]
        path = Path(tmp) / "empty.ipynb"
        nbformat.write(nb, path)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            execute_notebook(path, Path(tmp) / "out.ipynb", {"x": 2}, progress=False)
            times.append(time.perf_counter() - t0)
    return min(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scales", default="1,20")
    scales = [int(s) for s in parser.parse_args().scales.split(",")]
    from clinic_lib.pipeline import runner
    rows = []
    kernel = kernel_start_seconds()
    for scale in scales:
        url, data = loaded_sqlite(scale, name="chain")
        days = sorted(p.name for p in (data / "daily").iterdir())
        out = CACHE / f"chain-outputs-{scale}x"
        use_outputs(out, url, data)
        # the drops before the measured day, then the measured day: the full chain with training
        first, day = days[0], days[-1]
        t0 = time.perf_counter()
        runner.run_range(first, days[-2], steps=("validate", "refresh"), quiet=True)
        catch_up = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = runner.run_day(day, quiet=True)
        with_training = time.perf_counter() - t0
        steps = {s.name: s.seconds for s in result.steps}
        t0 = time.perf_counter()
        runner.run_day(day, quiet=True)  # again: the model is fresh now, so no training
        fresh = time.perf_counter() - t0
        notebooks = sum(1 for s in result.steps if s.notebook and str(s.notebook).endswith(".ipynb"))
        rows.append([f"{scale}x", f"chain for {day}, model missing (trains)", f"{with_training:.1f}",
                     f"{notebooks} x {kernel:.1f} = {notebooks * kernel:.1f}",
                     ", ".join(f"{k} {v:.1f}" for k, v in steps.items())])
        rows.append([f"{scale}x", f"chain for {day}, model fresh (no training)", f"{fresh:.1f}",
                     f"{notebooks - 1} x {kernel:.1f} = {(notebooks - 1) * kernel:.1f}", ""])
        if scale == 1:
            span = days[:30] if len(days) >= 30 else days
            url, data = loaded_sqlite(scale, name="backfill")
            use_outputs(CACHE / "backfill-outputs", url, data)
            t0 = time.perf_counter()
            runner.run_range(span[0], span[-1], quiet=True)
            backfill = time.perf_counter() - t0
            rows.append([f"{scale}x", f"backfill of {len(span)} days ({span[0]} .. {span[-1]})",
                         f"{backfill:.1f}", "1 backfill kernel + the last day's chain", ""])
        else:
            rows.append([f"{scale}x", f"catch-up of {len(days) - 1} days (validate + refresh, one kernel)",
                         f"{catch_up:.1f}", "", ""])
    print(table(["scale", "what", "wall s", "kernel start-up s (of it)", "per step s"], rows))
    print(f"\nkernel start-up + papermill overhead per notebook: {kernel:.2f} s")


if __name__ == "__main__":
    main()
