"""The run report: one HTML page made of a day's executed step notebooks.

``render_run_report(run_dir)`` reads ``run_dir/NN_step.ipynb`` in name order (= run order),
puts a header per step (with its status from ``state.json`` when the runner wrote one) and
writes ``run_dir/report.html`` with nbconvert's HTML exporter. Code is left out (outputs only).

The page needs no network: the template ``clinic_report`` (``clinic_lib/share/nbconvert``) is
nbconvert's ``lab`` template without require.js, MathJax and mermaid from CDNs, and images are
embedded as data URIs. Rich outputs that need JavaScript of their own (ipywidgets, plotly's JSON
output) show their text or image fallback, so step notebooks should show tables and static images;
an image's alternative text (``train.show_figure`` sets it) becomes its ``alt``.

Tables read as a person reads them: a pandas table's row numbers (an unnamed whole-number index)
are left out and a missing value (NaN, None, <NA>, NaT) is an empty cell. Each step's status and
seconds come from ``state.json``, or else from papermill's record in the notebook itself (the
backfill notebook, which stands for the days' validate and refresh steps).

The report holds what the steps show: patients' names, phones and e-mail addresses among them.
It stays in ``outputs/``, which is private (git-ignored, never published).
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


MISSING_TEXTS = frozenset({"NaN", "nan", "None", "<NA>", "NaT"})


def readable_table_html(markup: str) -> str:
    """A pandas table's HTML without its row numbers and with missing values as empty cells.

    Row numbers are the index column when it is unnamed, one level and whole numbers; a named or
    other index (step names, dates) is content and stays."""
    if 'class="dataframe"' not in markup:
        return markup
    from bs4 import BeautifulSoup
    soup = BeautifulSoup(markup, "html.parser")
    for table in soup.find_all("table", class_="dataframe"):
        head_rows = table.thead.find_all("tr") if table.thead else []
        body_rows = table.tbody.find_all("tr") if table.tbody else []
        row_heads = [row.find_all("th", recursive=False) for row in body_rows]
        plain_index = (len(head_rows) == 1 and body_rows and all(len(ths) == 1 for ths in row_heads)
                       and head_rows[0].find("th") is not None and not head_rows[0].find("th").get_text(strip=True)
                       and all(ths[0].get_text(strip=True).lstrip("-").isdigit() for ths in row_heads))
        if plain_index:
            head_rows[0].find("th").decompose()
            for ths in row_heads:
                ths[0].decompose()
        for cell in table.find_all("td"):
            if cell.get_text(strip=True) in MISSING_TEXTS:
                cell.string = ""
    return str(soup)


def _readable_outputs(cell) -> None:
    for output in cell.get("outputs", []):
        data = output.get("data") or {}
        if "text/html" in data:
            text = data["text/html"]
            data["text/html"] = readable_table_html("".join(text) if isinstance(text, list) else text)


def _papermill_status(nb) -> dict:
    """Status and seconds from papermill's record in an executed notebook."""
    record = nb.metadata.get("papermill") or {}
    out = {}
    if record.get("duration") is not None:
        out["seconds"] = round(float(record["duration"]), 2)
    if record.get("exception"):
        out["status"] = "failed"
    elif record.get("end_time"):
        out["status"] = "ok"
    return out


def _status(path: Path, nb, states: dict) -> dict:
    """A step's status and seconds: state.json's, completed from the notebook's papermill record.
    The backfill notebook has no entry of its own: the days' steps it ran name it (``in``)."""
    st = dict(states.get(_step_name(path), {}))
    covered = [v for v in states.values() if v.get("in") == path.name]
    if covered and "status" not in st:
        st["status"] = "ok" if all(v.get("status") == "ok" for v in covered) else "failed"
    if nb is not None:
        for key, value in _papermill_status(nb).items():
            st.setdefault(key, value)
    return st


def combined_notebook(run_dir: Path) -> nbformat.NotebookNode:
    """One notebook: a title, then for each step a header cell followed by its cells."""
    run_dir = Path(run_dir)
    states = _state(run_dir)
    paths = step_notebooks(run_dir)
    title = f"Clinic Ops run report — {run_dir.name}"
    notebooks = {}
    for p in paths:
        try:
            notebooks[p] = nbformat.read(p, as_version=4)
        except Exception as exc:  # a half-written notebook must not lose the whole report
            notebooks[p] = exc
    rows = []
    for p in paths:
        nb = notebooks[p]
        st = _status(p, None if isinstance(nb, Exception) else nb, states)
        rows.append(f"| [{html.escape(p.stem)}](#{p.stem}) | {html.escape(str(st.get('status', '')))} | "
                    f"{st.get('seconds', '')} | {html.escape(str(st.get('error', '')))[:120]} |")
    intro = (f"# {title}\n\nGenerated {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} from "
             f"`{run_dir}`.\n\n" + ("| step | status | seconds | error |\n|---|---|---|---|\n" + "\n".join(rows)
                                    if rows else "_No step notebooks in this run folder._"))
    book = nbformat.v4.new_notebook()
    book.metadata["title"] = title
    book.cells.append(nbformat.v4.new_markdown_cell(intro))
    for p in paths:
        nb = notebooks[p]
        if isinstance(nb, Exception):
            book.cells.append(nbformat.v4.new_markdown_cell(
                f'<h2 id="{p.stem}" class="run-step-header">{html.escape(p.stem)}</h2>\n\n'
                f"Could not read this notebook: {html.escape(str(nb)[:300])}"))
            continue
        st = _status(p, nb, states)
        status = f" — {st['status']}" if st.get("status") else ""
        book.cells.append(nbformat.v4.new_markdown_cell(
            f'<h2 id="{p.stem}" class="run-step-header">{html.escape(p.stem)}{html.escape(status)}</h2>'))
        for cell in nb.cells:
            cell.metadata.pop("jupyter", None)  # collapsed/hidden flags of the source do not apply
            _readable_outputs(cell)
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
