"""Small read-only tables the run notebooks show the analyst."""
from __future__ import annotations

import pandas as pd
import sqlalchemy as sa


def day_summary(engine: sa.Engine, day) -> pd.DataFrame:
    """Appointments of a clinic-local day by status, with the day's payments beside them."""
    query = sa.text("""
        SELECT a.status, COUNT(*) AS appointments,
               SUM(COALESCE(a.price_estimate_cents, 0)) / 100.0 AS price_estimate_eur
        FROM appointments a WHERE a.local_date = :day GROUP BY a.status ORDER BY a.status""")
    paid = sa.text("SELECT COUNT(*) AS payments, COALESCE(SUM(amount_cents), 0) / 100.0 AS paid_eur "
                   "FROM payments WHERE paid_date = :day")
    with engine.connect() as conn:
        by_status = pd.read_sql(query, conn, params={"day": str(day)})
        payments = conn.execute(paid, {"day": str(day)}).one()
    by_status.loc[len(by_status)] = ["payments made that day", payments.payments, payments.paid_eur]
    return by_status


def recent_etl_runs(engine: sa.Engine, limit: int = 5) -> pd.DataFrame:
    query = sa.text("SELECT run_id, job, day, started_at, finished_at, status, rows_read, rows_written, "
                    "error_message FROM etl_runs ORDER BY run_id DESC LIMIT :n")
    with engine.connect() as conn:
        return pd.read_sql(query, conn, params={"n": limit})
