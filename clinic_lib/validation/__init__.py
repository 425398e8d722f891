"""The validation gate: check a daily drop before anything is written, or the whole database.

``validate_drop(day)`` reads ``data/daily/D/`` and reports *every* problem (``dataset.parse_table``,
used by the refresh, stops at the first): file structure and values per file with pandera's lazy
validation (every failing row with its column and value), then the relational checks (orphans,
overlaps, payments against appointments, ids against the database) in SQL on the drop staged in
TEMP tables inside a transaction that is rolled back. The database's own tables are only read.

``validate_db()`` checks the whole database with set-based SQL (indexed EXISTS probes and
aggregates, no Python loops over rows). Checks that the database already guarantees with a
constraint it enforces (a CHECK, a validated Postgres foreign key, a primary key, the payment
triggers) are skipped and listed in ``report.notes``; ``full=True`` runs them anyway. SQLite
foreign keys are never trusted (another tool may write with ``PRAGMA foreign_keys=OFF``).

Each run writes ``validation_D.json`` / ``validation_db_<UTC timestamp>.json`` under
``get_settings().validation_dir`` and one row in ``validation_runs`` (the only write to the
database). ``report.exit_code``: 0 clean or warnings only, 1 errors; a run that cannot happen
(no drop folder, no database, bad day) raises ``CannotRun`` (exit 2). The check ids, severities and
meanings are in ``checks.py``.

The package: ``checks`` (the catalogue), ``report``, ``values``, ``read``, ``stage``, ``sql``,
``drop`` (validate_drop) and ``database`` (validate_db)."""
