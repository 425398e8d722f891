"""The randomised call holdout: which appointments of the evening's list reception does not call.

With ``CALL_HOLDOUT_SHARE`` = s > 0, an appointment is *held out* when

    u = first 8 bytes of HMAC-SHA256(secret, "call-holdout:<appointment_id>") / 2**64  <  s

so the choice is random (nothing about the patient or the risk enters it), reproducible (the same
appointment is held out however often the list is rebuilt, on every machine with the same
secret), and nobody can steer it without the secret. A larger share keeps every appointment a
smaller one held out and adds others. No ``random`` state is involved.

The secret is ``CLINIC_HOLDOUT_SECRET`` when set; otherwise one is generated once into the
private data folder (``<CLINIC_DATA_DIR>/call_holdout_secret``, readable by its owner only) and
read from there afterwards. Losing that file only changes which *future* appointments are held
out; the lists already built keep their marks.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

import numpy as np

from clinic_lib.core.errors import CannotRun

SECRET_FILE = "call_holdout_secret"
_PREFIX = b"call-holdout:"


def holdout_u(appointment_id: int, secret: bytes) -> float:
    """The appointment's uniform number in [0, 1) under this secret."""
    digest = hmac.new(secret, _PREFIX + str(int(appointment_id)).encode("ascii"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def is_held_out(appointment_id: int, share: float, secret: bytes) -> bool:
    """True when the appointment is held out of the calls at this share (0 = never)."""
    return share > 0 and holdout_u(appointment_id, secret) < share


def held_out(appointment_ids, share: float, secret: bytes) -> np.ndarray:
    """``is_held_out`` for many appointments: an array of 0/1."""
    ids = [int(i) for i in appointment_ids]
    if share <= 0:
        return np.zeros(len(ids), dtype=np.int64)
    return np.fromiter((holdout_u(i, secret) < share for i in ids), dtype=np.int64, count=len(ids))


def clinic_secret(settings) -> bytes:
    """The clinic's holdout secret: CLINIC_HOLDOUT_SECRET, else the private file (created once)."""
    if settings.holdout_secret:
        return settings.holdout_secret.encode("utf-8")
    path = Path(settings.data_dir) / SECRET_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if text:
        return text.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    # written whole into a private temporary file, then linked into place: linking fails if the
    # file exists, so of two processes creating it at once one wins and both read its secret
    fd, tmp = tempfile.mkstemp(prefix=f".{SECRET_FILE}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
    text = path.read_text().strip()
    if not text:
        raise CannotRun(f"the call holdout's secret file {path} is empty: delete it (a new one is made) "
                        "or set CLINIC_HOLDOUT_SECRET")
    return text.encode("utf-8")
