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

from clinic_lib.core.timeutil import BadDate, parse_day


def _day(value: str) -> dt.date:
    try:
        return parse_day(value)
    except BadDate as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _today():
    from clinic_lib.core.clinic_days import clinic_today
    return clinic_today()


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
    p.add_argument("--call-odds-ratio", type=float, default=None,
                   help="the planted effect of a reached call on the odds of failing (default 0.6; 1 = none)")


def cmd_demo(a):
    from clinic_lib.core.config import get_settings
    from clinic_lib.ingest.demo import generate_demo
    summary = generate_demo(
        a.data_dir or get_settings().data_dir, seed=a.seed, today=a.today or _today(),
        physios=a.physios * a.scale, patients=(a.patients or 400 * a.physios) * a.scale,
        days_history=a.days_history, days_ahead=a.days_ahead, drop_days=a.drop_days,
        **({"call_odds_ratio": a.call_odds_ratio} if a.call_odds_ratio is not None else {}))
    for key, value in summary.items():
        print(f"{key}: {value}")
    today = a.today or _today()
    _demo_marker(a.data_dir).write_text(json.dumps(
        {"today": str(today), "first_drop": str(today - dt.timedelta(days=a.drop_days - 1)),
         "seed": a.seed, "scale": a.scale}, indent=2))
    return 0


def _demo_marker(data_dir=None) -> Path:
    from clinic_lib.core.config import get_settings
    return Path(data_dir or get_settings().data_dir) / "demo.json"


def args_demo_day(p):
    p.add_argument("--first", action="store_true", help="the first day with a drop instead")


def cmd_demo_day(a):
    """Print the demo's current day (what `clinic demo` was run for), else today."""
    marker = _demo_marker()
    if not marker.exists():
        print(_today())
        return 0
    info = json.loads(marker.read_text())
    print(info["first_drop"] if a.first else info["today"])
    return 0


def args_where(p):
    pass


def cmd_where(a):
    from clinic_lib.core.config import get_settings
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
  reception:  clinic user add NAME, then make api  (http://{s.api_host}:{s.api_port}/, sign in)
  API:        make api        (http://{s.api_host}:{s.api_port}/priorities?day=YYYY-MM-DD, needs CLINIC_API_TOKEN)
""")
    return 0


def args_load(p):
    p.add_argument("--raw-dir", type=Path, default=None, help="default: data/raw")
    p.add_argument("--replace", action="store_true", help="delete the clinic's data first (one transaction)")


def cmd_load(a):
    from clinic_lib.ingest.refresh import load_raw
    n = load_raw(folder=a.raw_dir, replace=a.replace)
    print(f"loaded {n} rows")
    return 0


def args_migrate(p):
    pass


def cmd_migrate(a):
    from clinic_lib.core.migrate import CURRENT_VERSION, migrate
    applied = migrate()
    print(f"applied migrations {applied}" if applied else f"already at schema version {CURRENT_VERSION}")
    return 0


def args_validate(p):
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--day", type=_day, help="validate the drop data/daily/D/ against the database")
    what.add_argument("--db", action="store_true", help="validate the whole database")
    p.add_argument("--drop-dir", type=Path, default=None, help="with --day: the drop folder (default data/daily/D)")
    p.add_argument("--empty-day", action="store_true", help="with --day: the clinic was closed, no rows for D expected")
    p.add_argument("--full", action="store_true", help="with --db: also re-check what the schema's constraints enforce")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON instead of the summary")


def cmd_validate(a):
    """Exit 0: clean (warnings allowed); 1: errors found; 2: could not run (no drop folder, no database)."""
    from clinic_lib.validation.database import validate_db
    from clinic_lib.validation.drop import validate_drop
    if a.db:
        report = validate_db(full=a.full)
    else:
        report = validate_drop(a.day, folder=a.drop_dir, allow_empty=a.empty_day)
    print(report.to_json() if a.json else report.summary_text())
    return report.exit_code


def args_refresh(p):
    p.add_argument("--day", type=_day, required=True)
    p.add_argument("--empty-day", action="store_true", help="the clinic was closed: accept a drop with no rows for the day")
    p.add_argument("--drop-dir", type=Path, default=None)


def cmd_refresh(a):
    from clinic_lib.ingest.refresh import refresh_day
    r = refresh_day(a.day, folder=a.drop_dir, allow_empty=a.empty_day)
    print(f"refreshed {r.day}: read {r.rows_read} rows, wrote {r.rows_written}, deleted {r.deleted} "
          f"in {r.seconds:.3f} s")
    return 0


# --- reception: priorities / reminders / api ----------------------------------------------------

def _next_clinic_day():
    from clinic_lib.core.clinic_days import next_clinic_day
    return next_clinic_day(None, _today())


def args_priorities(p):
    p.add_argument("--day", type=_day, default=None, help="clinic day D (default: the next clinic day)")


def cmd_priorities(a):
    from clinic_lib.reception.priorities import build_priorities
    r = build_priorities(a.day or _next_clinic_day())
    print(f"priorities for {r.day}: {len(r)} appointment(s) "
          f"(risk from the model: {r.risk_sources['model']}, heuristic: {r.risk_sources['heuristic']}) "
          f"-> {r.csv_path}")
    if len(r):
        print(r.frame[["rank", "appt_start", "patient_name", "phone", "priority_score", "priority_reason"]]
              .head(20).to_string(index=False))
    return 0


def args_reminders(p):
    p.add_argument("--day", type=_day, default=None, help="clinic day D (default: the next clinic day)")
    p.add_argument("--dry-run", action="store_true", help="show the messages; write no file, no ledger row")
    p.add_argument("--resend", action="store_true", help="send again to appointments already reminded")


def cmd_reminders(a):
    from clinic_lib.reception.reminders import send_reminders
    r = send_reminders(a.day or _next_clinic_day(), dry_run=a.dry_run, resend=a.resend)
    print(r.summary())
    for m in r.messages:
        print(f"  {m['status']}: appointment {m['appointment_id']} to {m['to']}: {m['subject']}")
    for m in r.already_sent:
        print(f"  already sent: appointment {m['appointment_id']} to {m['to']} at {m['sent_at']}")
    for m in r.not_emailed:
        print(f"  not emailed: appointment {m['appointment_id']} {m['patient_name']} "
              f"(phone {m['phone'] or '-'}): {m['reason']}")
    return 0


def args_api(p):
    p.add_argument("--host", default=None, help="default: CLINIC_API_HOST or 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default: CLINIC_API_PORT or 8008")
    p.add_argument("--threads", type=int, default=4, help="waitress worker threads")
    p.add_argument("--no-cache", action="store_true", help="query the database for every list (no in-memory cache)")


def cmd_api(a):
    from clinic_lib.reception.api import serve
    serve(a.host, a.port, a.threads, cache=False if a.no_cache else None)
    return 0


# --- reception's accounts: user add / list / disable / enable / reset-password ----------------------

def args_user(p):
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, help_text in (("add", "add an account (asks for its password twice)"),
                            ("reset-password", "set a new password (ends the account's sessions, lifts a lock)")):
        q = actions.add_parser(name, help=help_text, description=help_text)
        q.add_argument("name")
        q.add_argument("--password-stdin", action="store_true",
                       help="read the password from the first line of standard input instead of asking")
    actions.add_parser("list", help="list the accounts", description="list the accounts")
    for name, help_text in (("disable", "disable an account (its open sessions end at their next request)"),
                            ("enable", "enable a disabled account again")):
        q = actions.add_parser(name, help=help_text, description=help_text)
        q.add_argument("name")


def _new_password(a) -> str:
    from clinic_lib.reception.users import AccountError
    if a.password_stdin:
        line = sys.stdin.readline()
        if not line:
            raise AccountError("--password-stdin: standard input is empty")
        return line.rstrip("\r\n")
    import getpass
    first = getpass.getpass(f"password for {a.name}: ")
    if getpass.getpass("the same password again: ") != first:
        raise AccountError("the two passwords differ; nothing was changed")
    return first


def cmd_user(a):
    from clinic_lib.core.db import make_engine
    from clinic_lib.core.migrate import ensure_schema
    from clinic_lib.reception import users
    engine = make_engine()
    ensure_schema(engine)
    if a.action == "list":
        accounts = users.list_users(engine)
        if not accounts:
            print("no accounts yet: clinic user add NAME")
        for u in accounts:
            print(f"{u['name']:<32} {u['status']:<40} created {u['created_at']}, "
                  f"last sign-in {u['last_sign_in_at'] or 'never'}")
        return 0
    if a.action == "add":
        name = users.normalise_name(a.name)  # a bad name is refused before the password is asked
        user = users.add_user(engine, name, _new_password(a))
        print(f"added {user.name}: sign in at http://{_api_address()}/")
    elif a.action == "reset-password":
        users.require_user(engine, a.name)  # an unknown name is refused before the password is asked
        user = users.reset_password(engine, a.name, _new_password(a))
        print(f"new password for {user.name}; its open sessions have ended")
    elif a.action == "disable":
        user = users.disable_user(engine, a.name)
        print(f"disabled {user.name}; its open sessions end at their next request")
    elif a.action == "enable":
        user = users.enable_user(engine, a.name)
        print(f"enabled {user.name}")
    return 0


def _api_address() -> str:
    from clinic_lib.core.config import get_settings
    s = get_settings()
    return f"{s.api_host}:{s.api_port}"


# --- cancellation-risk model: train / score / import-noshow --------------------------------------

def args_train(p):
    p.add_argument("--as-of", type=_day, default=None,
                   help="last clinic day with known outcomes to learn from (default: today in CLINIC_TZ)")
    p.add_argument("--valid-days", type=int, default=28,
                   help="holdout: the last N days up to --as-of, scored week by week by models fitted before each week")
    p.add_argument("--model", choices=("auto", "logreg", "hgb", "blend"), default="auto",
                   help="auto = the candidate with the best mean holdout ROC AUC (the four-feature baseline "
                        "ships instead when it is better)")


def cmd_train(a):
    from clinic_lib.modeling.train import train
    r = train(as_of=a.as_of, valid_days=a.valid_days, model=a.model)
    h, d = r.metrics["holdout"], r.metrics["deployed"]
    means = r.metrics["choice"]["mean_roc_auc"]
    print("mean ROC AUC over the holdout weeks: " + ", ".join(
        f"{m} {v:.3f}" for m, v in means.items() if v is not None))
    print(r.metrics["choice"]["reason"])
    for name, label in (("booked_before_evening", "booked before the evening"), ("same_day", "same-day bookings")):
        f = h[name]
        if f["n"]:
            auc = "n/a" if f["roc_auc"] is None else f"{f['roc_auc']:.3f}"
            ap = "n/a" if f["average_precision"] is None else f"{f['average_precision']:.3f}"
            print(f"holdout {h['start']}..{h['end']}, {label} (n={f['n']}): ROC AUC {auc}, average precision "
                  f"{ap}, precision@{f['k']} {f['precision_at_k']:.3f}, base rate {f['base_rate']:.3f}")
    print(f"model {r.model_version} ({r.kind}, calibration {d['calibration']}) trained on {d['train_start']}.."
          f"{d['train_end']} ({d['rows']} appointments) -> {r.model_path}, {r.metrics_path} ({r.seconds:.1f} s)")
    return 0


def args_score(p):
    p.add_argument("--day", type=_day, default=None, help="clinic day D (default: the next clinic day)")


def cmd_score(a):
    from clinic_lib.modeling.predict import score_day
    r = score_day(a.day or _next_clinic_day())
    counts = r.scores["risk_bucket"].value_counts().to_dict()
    print(f"scored {len(r.scores)} booked appointment(s) of {r.day} with {r.model_version} "
          f"(high {counts.get('high', 0)}, medium {counts.get('medium', 0)}, low {counts.get('low', 0)}) "
          f"-> {r.day_csv}")
    return 0


def args_import_noshow(p):
    p.add_argument("path", type=Path, help="KaggleV2-May-2016.csv.zip (or the .csv inside)")
    p.add_argument("--out", type=Path, default=None,
                   help="a fresh SQLite file to create (default: data/noshow.db)")
    p.add_argument("--database-url", default=None, help="import into this (empty) database instead of --out")


def cmd_import_noshow(a):
    from clinic_lib.core.config import normalise_database_url
    from clinic_lib.ingest.noshow import import_noshow
    url = normalise_database_url(a.database_url) if a.database_url else None
    summary = import_noshow(a.path, database_url=url, out=a.out)
    for key, value in summary.items():
        print(f"{key}: {value}")
    return 0


def args_dashboard(p):
    p.add_argument("--port", type=int, default=None, help="default: CLINIC_DASHBOARD_PORT or 8866")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")


def cmd_dashboard(a):
    from clinic_lib.dashboard.page import serve
    serve(port=a.port, host=a.host)  # replaces this process with Voila
    return 0


def args_monitor(p):
    p.add_argument("--day", type=_day, default=None, help="the day whose drop was applied last (default: today)")
    p.add_argument("--recompute-from", type=_day, default=None,
                   help="recompute every scored day from this day to --day (after changing LATE_CANCEL_HOURS)")


def cmd_monitor(a):
    from clinic_lib.modeling.monitoring import recompute_monitoring, update_monitoring
    from clinic_lib.modeling.retraining import retrain_decision
    day = a.day or _today()
    result = (recompute_monitoring(a.recompute_from, day) if a.recompute_from else update_monitoring(day))
    print(result.summary())
    decision = retrain_decision(day)
    if decision.figures is not None:
        print(decision.figures.table().to_string(float_format=lambda v: f"{v:.3f}"))
        print(decision.figures.by_band.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"retrain: {decision.reason}" if decision.retrain else "retrain: no (nothing passes its threshold)")
    return 0


COMMANDS = {
    "demo": (args_demo, cmd_demo, "generate the demo clinic's CSV files (data/raw and daily drops)"),
    "load": (args_load, cmd_load, "initial load of data/raw/ into the database"),
    "migrate": (args_migrate, cmd_migrate, "bring the database to the current schema"),
    "refresh": (args_refresh, cmd_refresh, "apply one day's drop (data/daily/D/)"),
    "validate": (args_validate, cmd_validate, "check a drop (--day D) or the whole database (--db); exit 0 ok, 1 errors, 2 could not run"),
    "train": (args_train, cmd_train, "train the cancellation-risk model (evaluate, choose, refit, save)"),
    "score": (args_score, cmd_score, "score a clinic day's booked appointments with the model"),
    "import-noshow": (args_import_noshow, cmd_import_noshow,
                      "import the public Medical Appointment No Shows file into a fresh database"),
    "demo-day": (args_demo_day, cmd_demo_day, "print the demo's current day"),
    "where": (args_where, cmd_where, "print where the outputs are and how to open the tools"),
    "priorities": (args_priorities, cmd_priorities, "build the callback list of a clinic day"),
    "reminders": (args_reminders, cmd_reminders, "write (and send) the reminder emails of a clinic day"),
    "api": (args_api, cmd_api, "serve reception's screen and the reception API (waitress)"),
    "user": (args_user, cmd_user, "reception's accounts for the screen: add, list, disable, enable, reset-password"),
    "dashboard": (args_dashboard, cmd_dashboard, "serve the KPI dashboard (Voila, http://127.0.0.1:8866/)"),
    "monitor": (args_monitor, cmd_monitor, "update the model-in-practice table after a day's refresh; print the "
                                           "last 4 weeks against the holdout estimate and whether to retrain"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clinic", description="Clinic Ops: operations for a physiotherapy clinic")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, _, help_text) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from clinic_lib.core.errors import UserError
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
