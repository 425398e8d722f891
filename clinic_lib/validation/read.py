"""Reading a drop's CSV files for the gate: every problem reported, not only the first."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd
import pyarrow as pa

from clinic_lib.ingest.drop_format import COLUMNS
from clinic_lib.validation.report import Report


def _plain_columns(text: str):
    """The usual export (nothing quoted, no blank line, every row as long as the header) read by
    Arrow's CSV reader: (header, 1, one Arrow array per header field, the data rows' lines), or
    None for any other file, which ``_csv_records`` reads record by record (slower)."""
    import pyarrow.csv as pacsv

    if '"' in text or "\x00" in text:
        return None
    if "\r" in text:
        if text.count("\r") != text.count("\r\n"):
            return None  # a lone carriage return ends a record for the csv module
        text = text.replace("\r\n", "\n")
    if text.startswith("\n") or "\n\n" in text:
        return None  # blank lines: the csv module skips them, and counts them
    try:
        table = pacsv.read_csv(
            io.BytesIO(text.encode("utf-8")),
            read_options=pacsv.ReadOptions(autogenerate_column_names=True, use_threads=False),
            parse_options=pacsv.ParseOptions(quote_char=False, ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(column_types={f"f{i}": pa.string() for i in range(text.split("\n", 1)[0].count(",") + 1)},
                                                 strings_can_be_null=False))
    except pa.ArrowInvalid:
        return None  # a row longer or shorter than the header
    header = [table.column(i)[0].as_py() for i in range(table.num_columns)]
    data = table.slice(1)
    return header, 1, [data.column(i).combine_chunks() for i in range(data.num_columns)], range(2, data.num_rows + 2)


def _csv_records(text: str, name: str, report: Report):
    """Any CSV, record by record: (header, header line, records, their first lines); blank lines
    are skipped, malformed and truncated records reported."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header, header_line, records, lines = None, None, [], []
    prev = 0
    while True:
        try:
            for record in reader:  # resumed after a malformed record (the reader goes on after it)
                start, prev = prev + 1, reader.line_num
                if not record or (len(record) == 1 and not record[0].strip()):
                    continue  # a blank line
                if header is None:
                    header, header_line = record, start
                    continue
                records.append(record)
                lines.append(start)
            break
        except csv.Error as exc:
            line = prev + 1
            if "end of data" in str(exc) or reader.line_num <= prev:
                report.add("row.truncated", [{"file": name, "line": line, "problem": str(exc)}])
                break
            report.add("file.malformed", [{"file": name, "line": line, "problem": str(exc)}])
            prev = reader.line_num
    return header, header_line, records, lines


def _read_file(path: Path, table: str, report: Report) -> pd.DataFrame | None:
    """One CSV -> text frame indexed by line number (header = line 1); structure problems reported."""
    name = path.name
    if not path.is_file():
        if table != "physio_hours":
            report.add("file.missing", [{"file": name, "folder": str(path.parent)}])
        return None
    data = path.read_bytes()
    if not data.strip():
        report.add("file.empty", [{"file": name, "bytes": len(data)}])
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        report.add("file.encoding", [{"file": name, "line": data[:exc.start].count(b"\n") + 1,
                                      "byte_offset": exc.start, "value": f"0x{data[exc.start]:02x}"}])
        return None
    plain = _plain_columns(text)
    header, header_line, records, lines = plain or _csv_records(text, name, report)
    if header is None:
        report.add("file.empty", [{"file": name, "bytes": len(data)}])
        return None
    expected = COLUMNS[table]
    position, extra = {}, []
    for i, col in enumerate(header):
        if col in expected and col not in position:
            position[col] = i
        else:
            extra.append(col)
    missing = [c for c in expected if c not in position]
    if missing:
        report.add("columns.missing", [{"file": name, "line": header_line, "column": c,
                                        "expected": ",".join(expected)} for c in missing])
    if extra:
        report.add("columns.extra", [{"file": name, "line": header_line, "column": c,
                                      "expected": ",".join(expected)} for c in extra])
    n = len(header)
    if plain is not None:  # every row complete; "records" are the columns
        index = pd.Index(lines, name="line", dtype="int64")
        cols = {c: pd.Series(records[i].to_pandas().array, index=index) for c, i in position.items()}
        return pd.DataFrame(cols, index=index)
    good, good_lines = [], []
    for record, line in zip(records, lines):
        if len(record) < n:
            report.add("row.truncated", [{"file": name, "line": line, "fields": len(record), "expected": n}])
        elif len(record) > n:
            report.add("row.too_many_fields", [{"file": name, "line": line, "fields": len(record), "expected": n}])
        else:
            good.append(record)
            good_lines.append(line)
    index = pd.Index(good_lines, name="line", dtype="int64")
    by_column = list(zip(*good)) if good else [()] * n
    cols = {c: pd.Series(by_column[i], index=index, dtype=object).astype(str) for c, i in position.items()}
    return pd.DataFrame(cols, index=index)
