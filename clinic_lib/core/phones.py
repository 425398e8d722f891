"""Phone numbers: the one rule for "reception can dial this number".

A number is *dialable* when it is not empty, is not in scientific notation, and normalises to a
*possible* full number (``phonenumbers``, E.164, default region ``PHONE_REGION``; a number that
is possible only locally does not count). Separators (spaces, ``-./()``) are ignored.

A number in scientific notation (``4.91762E+11``) is what a spreadsheet makes of a long number
stored as a number: the digits after the sixth are gone and cannot be recovered, so it is never
dialable, and the validation gate refuses it (``patient.phone_scientific``). The callback list's
``missing_phone`` is ``not dialable``; validation's ``patient.phone_invalid`` reports the other
numbers that are not dialable.
"""
from __future__ import annotations

import pandas as pd

# digits, one decimal separator at most, an exponent: 4.91762E+11, 4,91762e11, 4.9E+011
_SCIENTIFIC = r"[+-]?\d+(?:[.,]\d*)?[eE][+-]?\d+"


def default_region() -> str:
    from clinic_lib.core.config import get_settings
    return get_settings().phone_region


def possible(number: str, region: str) -> bool:
    """Is this a *possible* full number for phonenumbers (IS_POSSIBLE; IS_POSSIBLE_LOCAL_ONLY is not)?"""
    import phonenumbers
    try:
        parsed = phonenumbers.parse(str(number)[:64], region)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_possible_number_with_reason(parsed) == phonenumbers.ValidationResult.IS_POSSIBLE


def _text(s: pd.Series) -> pd.Series:
    return s.fillna("").astype(str).str.strip()


def scientific(s: pd.Series) -> pd.Series:
    """True where a value is a number in scientific notation (its digits are lost)."""
    return _text(s).str.fullmatch(_SCIENTIFIC).fillna(False).astype(bool)


def possible_or_empty(s: pd.Series, region: str | None = None) -> pd.Series:
    """True where a value is empty or normalises to a possible number (scientific notation aside).

    Vectorised: numbers are grouped by shape (separators removed; digits-only numbers keyed by
    their first six characters and their length, which is what decides "possible": the country
    code and the length of the national number), and phonenumbers runs once per shape.
    """
    region = region or default_region()
    t = _text(s)
    empty = t == ""
    norm = t.str.replace(r"[\s\-./()]", "", regex=True)
    simple = norm.str.fullmatch(r"\+*\d{1,30}").fillna(False).astype(bool)
    key = norm.where(~simple, norm.str[:6] + "#" + norm.str.len().astype(str))
    result = pd.Series(True, index=s.index)
    todo = ~empty
    if not todo.any():
        return result
    reps = norm[todo].groupby(key[todo], sort=False).first()
    verdict = {k: possible(v, region) for k, v in reps.items()}
    result[todo] = key[todo].map(verdict).astype(bool)
    return result


def dialable(s: pd.Series, region: str | None = None) -> pd.Series:
    """True where reception can dial the number: not empty, not scientific, a possible number."""
    return (_text(s) != "") & ~scientific(s) & possible_or_empty(s, region)
