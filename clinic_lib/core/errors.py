"""Errors a user can act on. The CLI prints their message (no traceback) and exits with exit_code.

exit_code 1: the data has a problem (a bad drop, a row the schema refuses);
exit_code 2: the job could not run (bad arguments, no model, no database).
"""


class UserError(Exception):
    exit_code = 1


class CannotRun(UserError):
    exit_code = 2
