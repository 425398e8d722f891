"""The run report: two tiny notebooks, really executed, become one offline HTML page."""
from __future__ import annotations

import json
import re

import nbformat
from nbclient import NotebookClient

from clinic_lib.pipeline.run_report import render_run_report, step_notebooks


def _executed(path, sources):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("Step notes in **markdown**")] + [
        nbformat.v4.new_code_cell(s) for s in sources]
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    nbformat.write(nb, path)


def test_report_has_each_step_in_run_order_without_code(tmp_path):
    run = tmp_path / "runs" / "2026-03-29"
    run.mkdir(parents=True)
    # Written out of order on purpose: the report follows the names (the run order).
    _executed(run / "02_refresh.ipynb", [
        "import pandas as pd\nsecret_code_marker = 1\npd.DataFrame({'rows_written': [42]})"])
    _executed(run / "01_validate.ipynb", [
        "print('validation: 0 errors, 1 warnings')",
        # a tiny PNG made without matplotlib: a 1x1 pixel
        "import base64\nfrom IPython.display import Image, display\n"
        "display(Image(data=base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
        "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==')))",
        # a matplotlib figure through train.show_figure: its titles become the image's alt text
        "%matplotlib inline\nimport matplotlib.pyplot as plt\nfrom clinic_lib.modeling.train import show_figure\n"
        "fig, (a, b) = plt.subplots(1, 2)\na.set_title('ROC <validation>')\nb.set_title('Calibration')\n"
        "show_figure(fig)"])
    (run / "state.json").write_text(json.dumps({"steps": {"validate": {"status": "ok", "seconds": 1.5},
                                                           "refresh": {"status": "ok", "seconds": 2.0}}}))
    assert [p.name for p in step_notebooks(run)] == ["01_validate.ipynb", "02_refresh.ipynb"]

    path = render_run_report(run)

    assert path == run / "report.html"
    text = path.read_text(encoding="utf-8")
    first, second = text.index('id="01_validate"'), text.index('id="02_refresh"')
    assert first < second
    assert text.index("validation: 0 errors, 1 warnings") > first
    assert second < text.index("rows_written") and "42" in text[second:]
    assert "Step notes in <strong>markdown</strong>" in text
    assert "secret_code_marker" not in text          # outputs only, no code
    assert "data:image/png;base64," in text          # images embedded
    assert text.count("<img ") == 2                  # the figure once, not again at the cell's end
    assert 'alt="ROC &lt;validation&gt;; Calibration"' in text
    assert "01_validate — ok" in text                # status from state.json
    # Offline: no script, stylesheet or image is fetched from another address.
    external = re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="(https?:)?//', text)
    assert external == []


def test_report_of_an_empty_run_folder(tmp_path):
    path = render_run_report(tmp_path)
    assert "No step notebooks" in path.read_text(encoding="utf-8")


def test_report_tables_read_plainly_and_the_backfill_has_status_and_time(tmp_path):
    """A step's table with a missing phone shows an empty cell, not NaN, and no pandas row numbers;
    the backfill notebook (papermill-executed, as the runner does) gets its status and seconds
    from papermill's record, as state.json names it only as where the days' steps ran."""
    import papermill

    run = tmp_path / "runs" / "2026-03-29"
    run.mkdir(parents=True)
    source = tmp_path / "backfill_source.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("import pandas as pd\n"
                                          "pd.DataFrame({'day': ['2026-03-27', '2026-03-28'], 'rows_written': [12, 9]})")]
    nbformat.write(nb, source)
    backfill = run / "00_backfill_2026-03-27_2026-03-28.ipynb"
    papermill.execute_notebook(str(source), str(backfill), kernel_name="python3", progress_bar=False)
    _executed(run / "05_priorities.ipynb", [
        "import pandas as pd\n"
        "pd.DataFrame({'patient_name': ['Alice Adler', 'Bruno Brandt'], 'phone': ['+49 30 1234567', None],"
        " 'risk_score': [0.41, float('nan')]})",
        # a named index is content, not row numbers: it stays
        "import pandas as pd\npd.DataFrame({'rows': [3]}, index=pd.Index(['validate'], name='step'))"])
    (run / "state.json").write_text(json.dumps({"steps": {
        "validate": {"status": "ok", "in": backfill.name}, "refresh": {"status": "ok", "in": backfill.name},
        "priorities": {"status": "ok", "seconds": 1.2}}}))

    text = render_run_report(run).read_text(encoding="utf-8")

    seconds = json.loads(backfill.read_text())["metadata"]["papermill"]["duration"]
    row = re.search(r"<td><a href=\"#00_backfill_2026-03-27_2026-03-28\">[^<]*</a></td>\s*<td>([^<]*)</td>\s*"
                    r"<td>([^<]*)</td>", text)
    assert row and row.group(1) == "ok" and float(row.group(2)) == round(seconds, 2), text[:3000]
    assert "00_backfill_2026-03-27_2026-03-28 — ok" in text
    listing = text[text.index('id="05_priorities"'):]
    assert "Bruno Brandt" in listing and "+49 30 1234567" in listing
    assert "NaN" not in listing and "None" not in listing and "&lt;NA&gt;" not in listing
    table = listing[:listing.index("</table>")]
    assert not re.search(r"<th>\s*[01]\s*</th>", table)  # no row numbers 0, 1
    assert table.count("<td></td>") == 2  # the missing phone and risk score, as empty cells
    assert re.search(r"<th>\s*validate\s*</th>", listing)  # the named index stays
