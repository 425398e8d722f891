"""docs/benchmarks.md from the figures of one ``make bench`` run (outputs/bench/*.json).

    .venv/bin/python bench/report.py [--input outputs/bench] [--output docs/benchmarks.md] [--run-id ID]

The machine is described once; then one table per subject, in the order of ``BENCH_ORDER`` (other
benches after them), each figure beside its target, the target scaled to this machine and whether it
is met. Files of different runs are never mixed: when the folder holds more than one run id the
report stops (exit 2) unless ``--run-id`` picks one. A bench script of bench/ that wrote no file in
the run, or stopped before it finished, is named at the end. Exit 0 when the document was written
(whether or not every target is met: the document says which are not).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import LOOP_LIMIT_SECONDS, ROOT, bench_dir, number, with_unit  # noqa: E402

BENCH_ORDER = ["demo", "refresh", "validate", "chain", "model", "monitoring", "api", "dashboard", "startup"]
KIND_SHORT = {"ratio": "ratio", "absolute": "absolute, scaled", "fixed": "fixed", "check": "check", "info": "–"}


class MixedRuns(SystemExit):
    pass


def read_run(folder: Path, run_id: str | None = None) -> list[dict]:
    """The bench files of one run in ``folder``; refuses a folder holding several runs unless
    ``run_id`` names the one to use."""
    files = sorted(folder.glob("*.json"))
    if not files:
        raise SystemExit(f"report: no figures in {folder}: run `make bench` first")
    benches = []
    for path in files:
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise SystemExit(f"report: {path} is not valid JSON ({exc})") from None
        data["_file"] = path.name
        benches.append(data)
    runs: dict[str, list[str]] = {}
    for b in benches:
        runs.setdefault(b.get("run_id"), []).append(b["_file"])
    if run_id is not None:
        if run_id not in runs:
            raise SystemExit(f"report: no file of run {run_id!r} in {folder} (runs there: {', '.join(map(str, runs))})")
        benches = [b for b in benches if b.get("run_id") == run_id]
    elif len(runs) > 1:
        listing = "; ".join(f"{r}: {', '.join(names)}" for r, names in runs.items())
        raise MixedRuns(f"report: {folder} holds the figures of {len(runs)} runs ({listing}); figures of different "
                        "runs are not put in one document: run `make bench` (it clears the folder first) or "
                        "pick one with --run-id")
    order = {name: i for i, name in enumerate(BENCH_ORDER)}
    return sorted(benches, key=lambda b: (order.get(b["bench"], len(order)), b["bench"]))


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _ratio(value) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}x" if value >= 100 else f"{value:.2f}x" if value < 10 else f"{value:.1f}x"


def figure_cell(row: dict) -> str:
    text = with_unit(row["figure"], row["unit"], digits=row.get("digits"))
    if row["kind"] == "ratio" and row.get("ratio") is not None:
        text += f" ({_ratio(row['ratio'])})"
    return text


def target_cell(row: dict) -> str:
    if row["kind"] == "info":
        return "–"
    text = row["target"]
    if row["kind"] == "ratio":
        text += f" ({with_unit(row['floor']['figure'], row['floor']['unit'], digits=row.get('digits'))})"
    return text


def scaled_cell(row: dict) -> str:
    if row["kind"] in ("ratio", "absolute") and row["scaled_target"] is not None:
        return f"{row['op']} {with_unit(row['scaled_target'], row['unit'], digits=row.get('digits'))}"
    if row["kind"] == "fixed":
        return "(not scaled)"
    return "–"


def met_cell(row: dict) -> str:
    return {"yes": "yes", "no": "**no**"}.get(row["met"], "–")


def subjects(benches: list[dict]) -> list[tuple[str, list[dict], list[str], list[dict]]]:
    """(subject, its rows, its notes, the benches it comes from) in the order the benches wrote them."""
    out: dict[str, tuple[list, list, list]] = {}
    for b in benches:
        for row in b["rows"]:
            entry = out.setdefault(row["subject"], ([], [], []))
            entry[0].append(row)
            if b not in entry[2]:
                entry[2].append(b)
        for subject, notes in b.get("notes", {}).items():
            entry = out.setdefault(subject, ([], [], []))
            entry[1].extend(notes)
            if b not in entry[2]:
                entry[2].append(b)
    return [(s, rows, notes, source) for s, (rows, notes, source) in out.items()]


def render(benches: list[dict], scripts: list[str]) -> str:
    first = benches[0]
    m = first["machine"]
    loops = [b["machine"]["loop_seconds"] for b in benches]
    rows = [r for b in benches for r in b["rows"]]
    judged = [r for r in rows if r["met"] is not None]
    missed = [r for r in judged if r["met"] == "no"]
    lines = [
        "# Benchmarks",
        "",
        "<!-- Written by bench/report.py from outputs/bench/*.json; `make bench` reruns every bench and",
        "     regenerates this file. Do not edit by hand. -->",
        "",
        f"Every figure below comes from one run of `make bench` (run id `{first['run_id']}`): each "
        "`bench/bench_*.py` recorded its figures (`bench/common.py`, `Results`) and `bench/report.py` "
        "wrote this page from them.",
        "",
        "## The machine",
        "",
        f"- {m['cores']} cores, {m['cpu_model']}" + (f", {m['memory_gb']:g} GB memory" if m.get("memory_gb") else "")
        + f"; {m['system']}; Python {m['python']}.",
        f"- Reference loop `{m['loop']}`: {number(min(loops))}"
        + (f"-{number(max(loops))}" if max(loops) != min(loops) else "") + " s over this run "
        f"(median of 3 at the start of each bench; the reference machine takes at most {LOOP_LIMIT_SECONDS:g} s). "
        "The machine is shared, so its speed varies from one minute to the next; each bench scales its "
        "absolute targets by its own measurement, given under its tables.",
    ]
    loads = [v for b in benches for v in (b.get("load_average") or {}).values() if v is not None]
    if loads and m.get("cores") and max(loads) > m["cores"]:
        lines.append(f"- Other work shared the machine during this run: the load average reached {number(max(loads))} "
                     f"on {m['cores']} cores (each bench's under its tables). A time measured over minutes then "
                     "suffers more than the reference loop, timed at the bench's start, accounts for; the ratio "
                     "targets, whose floors ran beside their figures, are the steadier guide.")
    lines += [
        "",
        "## Reading the tables",
        "",
        "- **ratio**: the figure against a floor measured in the same run (the least any implementation of "
        "the same job could take, or the same request without the work being judged); the target names the "
        "floor and gives its figure in brackets, the figure's ratio to it is in brackets beside the figure.",
        f"- **absolute, scaled**: a bound for a machine whose reference loop takes at most {LOOP_LIMIT_SECONDS:g} s; "
        f"on a slower one a time may take loop/{LOOP_LIMIT_SECONDS:g} times as long and a rate may be "
        f"{LOOP_LIMIT_SECONDS:g}/loop times as high. Where the loop is faster the bound stays as written.",
        "- **fixed**: a bound on something that is not a speed (ROC AUC, memory, a file's size), not scaled.",
        "- **scaled target** is the bound this run was judged by, in the figure's unit; **met** compares the figure with it.",
        "",
        f"{len(judged)} targets, {len(judged) - len(missed)} met"
        + (f", {len(missed)} not met:" if missed else "."),
    ]
    if missed:
        lines.append("")
        lines += [f"- {r['subject']}: {r['measure']}: {figure_cell(r)} against {target_cell(r)}" for r in missed]
    for subject, srows, notes, source in subjects(benches):
        lines += ["", f"## {subject}", ""]
        lines += [f"{n}" for n in notes] + ([""] if notes else [])
        if srows:
            lines.append("| measure | figure | target | kind | scaled target | met | details |")
            lines.append("|---|---:|---|---|---:|---|---|")
            for r in srows:
                lines.append("| " + " | ".join(_cell(c) for c in (
                    r["measure"], figure_cell(r), target_cell(r), KIND_SHORT[r["kind"]], scaled_cell(r),
                    met_cell(r), r.get("detail") or "")) + " |")
            lines.append("")
        for b in source:
            load = b.get("load_average") or {}
            state = "" if b.get("complete") else " **It stopped before it finished: the figures it did not reach are missing.**"
            lines.append(f"`{b['script']}`{' ' + ' '.join(b['argv']) if b.get('argv') else ''}: reference loop "
                         f"{number(b['machine']['loop_seconds'])} s, load average {number(load.get('start'))} at its "
                         f"start and {number(load.get('end')) if load.get('end') is not None else '–'} at its end.{state}")
    wrote = {b["script"] for b in benches}
    silent = [s for s in scripts if s not in wrote]
    if silent:
        lines += ["", "## Benches without figures in this run", ""]
        lines += [f"- `{s}` wrote no figures (it does not record them, or it failed before its first)." for s in silent]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, default=None, help="default: outputs/bench (CLINIC_BENCH_DIR)")
    ap.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--run-id", default=None, help="use this run's files when the folder holds several runs")
    a = ap.parse_args(argv)
    folder = a.input or bench_dir()
    try:
        benches = read_run(folder, a.run_id)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    scripts = sorted(f"bench/{p.name}" for p in (ROOT / "bench").glob("bench_*.py"))
    text = render(benches, scripts)
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text(text)
    rows = [r for b in benches for r in b["rows"] if r["met"] == "no"]
    print(f"wrote {a.output} from {len(benches)} bench file(s) of run {benches[0]['run_id']}; "
          f"{len(rows)} target(s) not met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
