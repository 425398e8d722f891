"""The run report: one HTML page made of a day's executed step notebooks.

``render_run_report(run_dir)`` reads ``run_dir/NN_step.ipynb`` in name order (= run order),
puts a header per step (with its status from ``state.json`` when the runner wrote one) and
writes ``run_dir/report.html`` with nbconvert's HTML exporter. Code is left out (outputs only).

The page needs no network: the template ``clinic_report`` (``clinic_lib/share/nbconvert``) is
nbconvert's ``lab`` template without require.js, MathJax and mermaid from CDNs, and images are
embedded as data URIs. Rich outputs that need JavaScript of their own (ipywidgets, plotly's JSON
output) show their text or image fallback, so step notebooks should show tables and static images;
an image's alternative text (``train.show_figure`` sets it) becomes its ``alt``.
"""
from __future__ import annotations

import datetime as dt
import html
import json
from pathlib import Path

import nbformat

SHARE_DIR = Path(__file__).resolve().parents[1] / "share"
TEMPLATE_DIR = SHARE_DIR / "nbconvert" / "templates"
REPORT_NAME = "report.html"


def step_notebooks(run_dir: Path) -> list[Path]:
    """The executed notebooks of a run, in run order (their names start with the step number)."""
    return sorted(p for p in Path(run_dir).glob("*.ipynb") if not p.name.startswith("."))


def _state(run_dir: Path) -> dict:
    path = Path(run_dir) / "state.json"
    try:
        return json.loads(path.read_text()).get("steps", {}) if path.exists() else {}
    except (OSError, ValueError):
        return {}


def _step_name(path: Path) -> str:
    stem = path.stem
    head, _, rest = stem.partition("_")
    return rest if head.isdigit() and rest else stem


def combined_notebook(run_dir: Path) -> nbformat.NotebookNode:
    """One notebook: a title, then for each step a header cell followed by its cells."""
    run_dir = Path(run_dir)
    states = _state(run_dir)
    paths = step_notebooks(run_dir)
    title = f"Clinic Ops run report — {run_dir.name}"
    rows = []
    for p in paths:
        st = states.get(_step_name(p), {})
        rows.append(f"| [{html.escape(p.stem)}](#{p.stem}) | {st.get('status', '')} | "
                    f"{st.get('seconds', '')} | {html.escape(str(st.get('error', '')))[:120]} |")
    intro = (f"# {title}\n\nGenerated {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} from "
             f"`{run_dir}`.\n\n" + ("| step | status | seconds | error |\n|---|---|---|---|\n" + "\n".join(rows)
                                    if rows else "_No step notebooks in this run folder._"))
    book = nbformat.v4.new_notebook()
    book.metadata["title"] = title
    book.cells.append(nbformat.v4.new_markdown_cell(intro))
    for p in paths:
        try:
            nb = nbformat.read(p, as_version=4)
        except Exception as exc:  # a half-written notebook must not lose the whole report
            book.cells.append(nbformat.v4.new_markdown_cell(
                f'<h2 id="{p.stem}" class="run-step-header">{html.escape(p.stem)}</h2>\n\n'
                f"Could not read this notebook: {html.escape(str(exc)[:300])}"))
            continue
        st = states.get(_step_name(p), {})
        status = f" — {st['status']}" if st.get("status") else ""
        book.cells.append(nbformat.v4.new_markdown_cell(
            f'<h2 id="{p.stem}" class="run-step-header">{html.escape(p.stem)}{html.escape(status)}</h2>'))
        for cell in nb.cells:
            cell.metadata.pop("jupyter", None)  # collapsed/hidden flags of the source do not apply
            book.cells.append(cell)
    for i, cell in enumerate(book.cells):
        cell["id"] = f"c{i}"
    return book


def render_run_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` (one section per step notebook, in run order); return its path."""
    from nbconvert import HTMLExporter

    run_dir = Path(run_dir)
    book = combined_notebook(run_dir)
    exporter = HTMLExporter(template_name="clinic_report", extra_template_basedirs=[str(TEMPLATE_DIR)],
                            exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True,
                            embed_images=True)
    body, _ = exporter.from_notebook_node(book, resources={"metadata": {"name": book.metadata["title"]}})
    out = run_dir / REPORT_NAME
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(body, encoding="utf-8")
    tmp.replace(out)
    return out
