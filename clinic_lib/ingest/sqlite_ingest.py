"""Many rows into a SQLite file fast: through scratch files written by ADBC, then one copy each.

Python's ``sqlite3`` binds every value of every row through the interpreter: for a large
initial load (millions of values) turning frames into tuples and binding them is the largest
part of the load after SQLite's own work. The ADBC SQLite driver (Apache Arrow's database
connectivity) binds Arrow columns in C: the same rows go into scratch files on a second thread
while SQLite copies the previous table in with ``INSERT ... SELECT``.

The copies run on the caller's connection, inside the caller's transaction (``db.begin_bulk_write``),
so the load is still one transaction with the schema's CHECKs; the scratch files are only ever
read. They hold patient data, so they live beside the database (in the private ``data/`` folder);
``begin_bulk_write`` deletes them when the transaction ends, and a bulk write deletes any that a
killed one left behind before it writes its own.

Two SQLite libraries (ADBC's and Python's) must never have the same file open at once: the ADBC
connection is closed before its file is attached, and never sees the clinic's file.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Union

import pandas as pd
import pyarrow as pa
import sqlalchemy as sa

from clinic_lib.core import db

SCRATCH_SUFFIX = ".load-scratch"
SCRATCH_SCHEMA = "load_scratch"
FrameOrMaker = Union[pd.DataFrame, Callable[[], pd.DataFrame]]


def scratch_file(database: Path, table: str) -> Path:
    return database.with_name(f"{database.name}{SCRATCH_SUFFIX}-{table}")


def _arrow_column(series: pd.Series, column: sa.Column) -> pa.Array:
    """One column in the type the clinic's table stores (whole numbers or text; None -> NULL)."""
    kind = pa.int64() if isinstance(column.type, sa.Integer) else pa.string()
    return pa.array(series, type=kind, from_pandas=True)


def _arrow_table(table: str, frame: pd.DataFrame) -> pa.Table:
    columns = [c for c in db.metadata.tables[table].columns if c.name in frame.columns]
    return pa.table({c.name: _arrow_column(frame[c.name], c) for c in columns})


def _write_scratch(path: Path, table: str, frame: FrameOrMaker) -> tuple[pd.DataFrame, list[str]]:
    """The frame (made here, if given as a function) as a plain table (no rules) of a new
    SQLite file; returns the frame and its columns."""
    import adbc_driver_sqlite.dbapi as adbc  # imported here: only the initial load needs it

    if callable(frame):
        frame = frame()
    data = _arrow_table(table, frame)
    with adbc.connect(str(path), autocommit=True) as scratch:
        with scratch.cursor() as cur:
            # a throw-away file: no journal, no syncs (a crash leaves only a file to delete)
            cur.execute("PRAGMA journal_mode = OFF")
            cur.execute("PRAGMA synchronous = OFF")
            cur.adbc_ingest(table, data, mode="create")
    return frame, data.column_names


def insert_frames(conn: sa.Connection, frames: dict[str, FrameOrMaker],
                  after_each: Callable[[str], None] | None = None) -> dict[str, pd.DataFrame]:
    """Insert every frame's rows into its table of the SQLite file of ``conn``, in the order
    given and in the order of the rows, inside the caller's transaction; columns a frame lacks
    stay NULL. The scratch tables have no rules: the clinic's table checks every row as it is
    copied in (its CHECKs; foreign keys and triggers as the caller has set them).
    ``after_each(table)`` runs on the caller's connection once a table is in (to build its
    indices, say). Returns the frames.

    One scratch file per table, written by a second thread: while SQLite copies one table in,
    ADBC writes the next (both release the GIL), and no file is ever open in both libraries.
    A frame given as a function is made on that thread too, so reading and checking the next
    file also runs beside SQLite's work; its errors reach the caller when that table's turn
    comes, in the order given.
    """
    database = db.sqlite_file(conn)
    if database is None:
        raise ValueError("insert_frames needs a SQLite database file")
    scratch = conn.info.get(db.SCRATCH_FILES)
    if scratch is None:
        raise ValueError("insert_frames runs inside db.begin_bulk_write, which removes its scratch files")
    _remove_leftovers(database)  # of a write that was killed: this one holds the write lock
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scratch-writer")
    done = {}
    try:
        written = {}
        for table, frame in frames.items():
            scratch.append(scratch_file(database, table))
            written[table] = writer.submit(_write_scratch, scratch[-1], table, frame)
        for table, future in written.items():
            schema = f"{SCRATCH_SCHEMA}_{table}"
            done[table], columns = future.result()  # the writer has closed this file
            listed = ", ".join(columns)
            conn.exec_driver_sql(f"ATTACH DATABASE ? AS {schema}", (str(scratch_file(database, table)),))
            conn.exec_driver_sql(f"INSERT INTO main.{table} ({listed}) "
                                 f"SELECT {listed} FROM {schema}.{table} ORDER BY rowid")
            if after_each is not None:
                after_each(table)
    finally:
        writer.shutdown(wait=True, cancel_futures=True)  # after a refusal: write no more files
    return done


def _remove_leftovers(database: Path) -> None:
    """Delete the scratch files beside ``database`` that a killed bulk write left behind."""
    prefix = f"{database.name}{SCRATCH_SUFFIX}-"  # not a glob: the name may hold [ or *
    for path in database.parent.iterdir():
        if path.name.startswith(prefix):
            path.unlink(missing_ok=True)
