#!/usr/bin/env python
"""Run the daily chain for a clinic day (or a range of days) with papermill.

    python run_daily.py --day 2026-11-24            # the chain for the end of that day
    python run_daily.py                             # today in CLINIC_TZ
    python run_daily.py --day 2026-11-24 --steps validate,refresh
    python run_daily.py --day 2026-11-24 --resume   # skip the steps that already succeeded
    python run_daily.py --from 2026-11-01 --to 2026-11-24   # catch up, in order
    python run_daily.py --from 2026-12-22 --to 2026-12-28 --closed 2026-12-24,2026-12-27
                                                    # ... naming the days the clinic was closed

Exit codes: 0 done; 1 a step failed (the message names the step, the error and the notebook to
open); 2 could not run (bad arguments, outputs/ not writable, a roster day without a drop: nothing
ran); 3 another run holds the lock (nothing ran); 128 + the signal's number (143 SIGTERM,
130 SIGINT, 129 SIGHUP) stopped: the running notebook's kernel was stopped first.
"""
from __future__ import annotations

import argparse
import logging
import sys

from clinic_lib.core.errors import UserError
from clinic_lib.core.timeutil import BadDate, parse_day
from clinic_lib.pipeline import kernels, runner


def _day(text: str):
    try:
        return parse_day(text)
    except BadDate as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _days(text: str):
    try:
        return [parse_day(part.strip()) for part in text.split(",") if part.strip()]
    except BadDate as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_daily.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--day", type=_day, help="clinic-local day YYYY-MM-DD (default: today in CLINIC_TZ)")
    p.add_argument("--from", dest="date_from", type=_day, help="first day of a backfill")
    p.add_argument("--to", dest="date_to", type=_day, help="last day of a backfill")
    p.add_argument("--steps", help=f"comma-separated subset of: {', '.join(runner.STEP_NAMES)}")
    p.add_argument("--resume", action="store_true", help="skip the steps that succeeded before for the day")
    p.add_argument("--empty-day", action="store_true",
                   help="the clinic was closed: accept a drop without rows, or no drop at all "
                        "(with --from/--to: every day of the range)")
    p.add_argument("--closed", type=_days, default=[], metavar="D1,D2,...",
                   help="with --from/--to: the days of the range the clinic was closed (as --empty-day for those)")
    p.add_argument("--quiet", action="store_true", help="log lines for a scheduler instead of progress bars")
    p.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                   help="wait this long for another run to finish (default: exit at once)")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        steps = runner.parse_steps(args.steps)
    except UserError as exc:
        parser.error(str(exc))
    if (args.date_from is None) != (args.date_to is None):
        parser.error("--from and --to go together")
    if args.date_from and args.day:
        parser.error("give either --day or --from/--to")
    if args.date_from and args.date_from > args.date_to:
        parser.error(f"--from {args.date_from} is after --to {args.date_to}")
    if args.closed and not args.date_from:
        parser.error("--closed names days of a range (--from/--to); for one day use --empty-day")
    outside = [d for d in args.closed if args.date_from and not args.date_from <= d <= args.date_to]
    if outside:
        parser.error(f"--closed {', '.join(map(str, outside))}: not in the range {args.date_from} .. {args.date_to}")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s" if args.quiet else "%(message)s")
    logging.getLogger("papermill").setLevel(logging.WARNING)  # our own lines say which step runs
    try:
        # a stop signal first stops the running notebook kernel, then the lock is let go
        with kernels.stopping_kernels_on_signals(), runner.locked(args.wait):
            if args.date_from:
                runner.run_range(args.date_from, args.date_to, steps=steps, resume=args.resume,
                                 quiet=args.quiet, empty_day=args.empty_day, closed=args.closed)
                print(f"days {args.date_from} .. {args.date_to} done; records in {runner.run_dir(args.date_from).parent}")
            else:
                day = args.day or runner.default_day()
                result = runner.run_day(day, steps=steps, resume=args.resume, quiet=args.quiet,
                                        empty_day=args.empty_day)
                print(f"day {day}: {len(result.steps)} step(s) done; records in {runner.run_dir(day)}")
    except UserError as exc:
        print(f"run_daily.py: {exc}", file=sys.stderr)
        return exc.exit_code
    except kernels.RunStopped as exc:
        print(f"run_daily.py: {kernels.stopped_message(exc, runner.current_work())}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
