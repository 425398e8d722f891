"""The ``clinic`` command (also ``python -m clinic_lib``): one subcommand per job.

Exit codes: 0 done, 1 the job found a problem in the data (a bad drop, validation errors),
2 a usage error or the job could not run.
Each subcommand is an ``args_<name>`` (its options) and a ``cmd_<name>`` (what it does).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from .timeutil import BadDate, parse_day


def _day(value: str) -> dt.date:
    try:
        return parse_day(value)
    except BadDate as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _today():
    from .config import get_settings
    from .timeutil import today_local
    return today_local(get_settings().clinic_tz)


# --- demo / load / migrate / refresh (foundation) ------------------------------------------------

def args_demo(p):
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--today", type=_day, default=None, help="the demo's current day (default: today in CLINIC_TZ)")
    p.add_argument("--physios", type=int, default=8)
    p.add_argument("--patients", type=int, default=None, help="default: 400 per physio")
    p.add_argument("--days-history", type=int, default=730)
    p.add_argument("--days-ahead", type=int, default=21)
    p.add_argument("--drop-days", type=int, default=14, help="how many daily drops, ending today")
    p.add_argument("--scale", type=int, default=1, help="multiply physios and patients (20 = ~1M appointments)")
    p.add_argument("--data-dir", type=Path, default=None, help="default: the configured data folder")


def cmd_demo(a):
    from .config import get_settings
    from .demo import generate_demo
    summary = generate_demo(
        a.data_dir or get_settings().data_dir, seed=a.seed, today=a.today or _today(),
        physios=a.physios * a.scale, patients=(a.patients or 400 * a.physios) * a.scale,
        days_history=a.days_history, days_ahead=a.days_ahead, drop_days=a.drop_days)
    for key, value in summary.items():
        print(f"{key}: {value}")
    _demo_marker(a.data_dir).write_text(json.dumps(
        {"today": str(a.today or _today()), "seed": a.seed, "scale": a.scale}, indent=2))
    return 0


def _demo_marker(data_dir=None) -> Path:
    from .config import get_settings
    return Path(data_dir or get_settings().data_dir) / "demo.json"


def args_demo_day(p):
    pass


def cmd_demo_day(a):
    """Print the demo's current day (what `clinic demo` was run for), else today."""
    marker = _demo_marker()
    print(json.loads(marker.read_text())["today"] if marker.exists() else _today())
    return 0


def args_where(p):
    pass


def cmd_where(a):
    from .config import get_settings
    s = get_settings()
    print(f"""
Outputs
  run records (executed notebooks, report.html): {s.runs_dir}/<day>/
  callback lists:   {s.priorities_dir}/priorities_<day>.csv
  risk scores:      {s.scores_dir}/
  reminder emails:  {s.email_outbox_dir}/
  model + metrics:  {s.model_dir}/
  validation:       {s.validation_dir}/
Next
  notebooks:  make lab        (JupyterLab on notebooks/)
  dashboard:  make dashboard  (Voila on http://127.0.0.1:{s.dashboard_port}/)
  API:        make api        (http://{s.api_host}:{s.api_port}/priorities?day=YYYY-MM-DD, needs CLINIC_API_TOKEN)
""")
    return 0


def args_load(p):
    p.add_argument("--raw-dir", type=Path, default=None, help="default: data/raw")
    p.add_argument("--replace", action="store_true", help="delete the clinic's data first (one transaction)")


def cmd_load(a):
    from .refresh import load_raw
    n = load_raw(folder=a.raw_dir, replace=a.replace)
    print(f"loaded {n} rows")
    return 0


def args_migrate(p):
    pass


def cmd_migrate(a):
    from .migrate import CURRENT_VERSION, migrate
    applied = migrate()
    print(f"applied migrations {applied}" if applied else f"already at schema version {CURRENT_VERSION}")
    return 0


def args_refresh(p):
    p.add_argument("--day", type=_day, required=True)
    p.add_argument("--empty-day", action="store_true", help="the clinic was closed: accept a drop with no rows for the day")
    p.add_argument("--drop-dir", type=Path, default=None)


def cmd_refresh(a):
    from .refresh import refresh_day
    r = refresh_day(a.day, folder=a.drop_dir, allow_empty=a.empty_day)
    print(f"refreshed {r.day}: read {r.rows_read} rows, wrote {r.rows_written}, deleted {r.deleted} "
          f"in {r.seconds:.3f} s")
    return 0


COMMANDS = {
    "demo": (args_demo, cmd_demo, "generate the demo clinic's CSV files (data/raw and daily drops)"),
    "load": (args_load, cmd_load, "initial load of data/raw/ into the database"),
    "migrate": (args_migrate, cmd_migrate, "bring the database to the current schema"),
    "refresh": (args_refresh, cmd_refresh, "apply one day's drop (data/daily/D/)"),
    "demo-day": (args_demo_day, cmd_demo_day, "print the demo's current day"),
    "where": (args_where, cmd_where, "print where the outputs are and how to open the tools"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clinic", description="Clinic Ops: operations for a physiotherapy clinic")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, _, help_text) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import UserError
    try:
        return COMMANDS[args.command][1](args) or 0
    except UserError as exc:
        print(f"clinic {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"clinic {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
