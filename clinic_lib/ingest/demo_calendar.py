"""The demo clinic's calendar and staff: German holidays, local time as numbers, names, the physios and their weekly blocks (see demo.py for the whole story)."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

EPOCH = dt.date(1970, 1, 1)
DAY_S = 86400

FIRST_NAMES_F = ["Anna", "Maria", "Julia", "Laura", "Lena", "Sarah", "Lisa", "Katharina", "Sophie", "Hannah",
                 "Emma", "Mia", "Lea", "Johanna", "Claudia", "Sabine", "Petra", "Monika", "Ursula", "Andrea",
                 "Susanne", "Birgit", "Karin", "Heike", "Nicole", "Stefanie", "Christina", "Franziska", "Jana",
                 "Ingrid", "Renate", "Gisela", "Helga", "Elke", "Martina", "Anja", "Tanja", "Melanie", "Nina",
                 "Marie", "Charlotte", "Greta", "Ida", "Frieda", "Marlene", "Ilse", "Doris", "Gabriele"]
FIRST_NAMES_M = ["Thomas", "Michael", "Andreas", "Stefan", "Peter", "Klaus", "Wolfgang", "Jürgen", "Frank",
                 "Uwe", "Markus", "Christian", "Daniel", "Alexander", "Jan", "Tobias", "Sebastian", "Lukas",
                 "Felix", "Jonas", "Leon", "Paul", "Maximilian", "Florian", "Matthias", "Martin", "Dieter",
                 "Hans", "Günter", "Horst", "Manfred", "Bernd", "Ralf", "Jörg", "Dirk", "Sven", "Tim", "Niklas",
                 "Moritz", "Philipp", "Simon", "David", "Erik", "Karl", "Heinz", "Werner", "Helmut", "Rainer"]
LAST_NAMES = ["Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz",
              "Hoffmann", "Schäfer", "Koch", "Bauer", "Richter", "Klein", "Wolf", "Schröder", "Neumann",
              "Schwarz", "Zimmermann", "Braun", "Krüger", "Hofmann", "Hartmann", "Lange", "Schmitt", "Werner",
              "Schmitz", "Krause", "Meier", "Lehmann", "Schmid", "Schulze", "Maier", "Köhler", "Herrmann",
              "König", "Walter", "Mayer", "Huber", "Kaiser", "Fuchs", "Peters", "Lang", "Scholz", "Möller",
              "Weiß", "Jung", "Hahn", "Schubert", "Vogel", "Friedrich", "Keller", "Günther", "Frank", "Berger",
              "Winkler", "Roth", "Beck", "Lorenz", "Baumann", "Franke", "Albrecht", "Schuster", "Simon",
              "Ludwig", "Böhm", "Winter", "Kraus", "Martin", "Schumacher", "Krämer", "Vogt", "Stein", "Jäger",
              "Otto", "Sommer", "Groß", "Seidel", "Heinrich", "Brandt", "Haas", "Schreiber", "Graf",
              "Schulte", "Dietrich", "Ziegler", "Kuhn", "Kühn", "Pohl", "Engel", "Horn", "Busch", "Bergmann",
              "Thomas", "Voigt", "Sauer", "Arnold", "Wolff", "Pfeiffer", "Yilmaz", "Kaya", "Nowak", "Kowalski"]
EMAIL_DOMAINS = ["web.de", "gmx.de", "gmail.com", "t-online.de", "outlook.de", "posteo.de", "icloud.com"]
_ASCII = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue"})


# --- calendar helpers ---------------------------------------------------------------------------

def _dn(day: dt.date) -> int:
    """Day number (days since 1970-01-01)."""
    return (day - EPOCH).days


def _easter(year: int) -> dt.date:
    a, b, c = year % 19, year // 100, year % 100
    d, e = b // 4, b % 4
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    l_ = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * l_) // 451
    month = (h + l_ - 7 * m + 114) // 31
    day = ((h + l_ - 7 * m + 114) % 31) + 1
    return dt.date(year, month, day)


def _closed_days(first: int, last: int) -> np.ndarray:
    """German public holidays (national ones) plus Dec 24 and Dec 31, as day numbers."""
    out = []
    y0 = (EPOCH + dt.timedelta(days=first)).year
    y1 = (EPOCH + dt.timedelta(days=last)).year
    for y in range(y0, y1 + 1):
        e = _easter(y)
        days = [dt.date(y, 1, 1), e - dt.timedelta(days=2), e + dt.timedelta(days=1), dt.date(y, 5, 1),
                e + dt.timedelta(days=39), e + dt.timedelta(days=50), dt.date(y, 10, 3), dt.date(y, 12, 24),
                dt.date(y, 12, 25), dt.date(y, 12, 26), dt.date(y, 12, 31)]
        out += [_dn(d) for d in days]
    return np.array(sorted(out), dtype=np.int64)


def _weekday(dn):
    return (np.asarray(dn) + 3) % 7  # 1970-01-01 was a Thursday (3)


def _localize(local_s: np.ndarray, tz) -> np.ndarray:
    """Local wall-clock seconds -> UTC seconds (business hours: never in a DST gap)."""
    idx = pd.DatetimeIndex(np.asarray(local_s, dtype="int64").astype("datetime64[s]"))
    utc = idx.tz_localize(tz, ambiguous=True, nonexistent="shift_forward").tz_convert("UTC")
    return utc.tz_localize(None).values.astype("datetime64[s]").astype(np.int64)


def _to_local(utc_s: np.ndarray, tz) -> np.ndarray:
    idx = pd.DatetimeIndex(np.asarray(utc_s, dtype="int64").astype("datetime64[s]")).tz_localize("UTC")
    return idx.tz_convert(tz).tz_localize(None).values.astype("datetime64[s]").astype(np.int64)


def _fmt(utc_s: np.ndarray, tz) -> np.ndarray:
    """UTC seconds -> '2026-03-29T09:00:00+02:00' (clinic-local wall clock with its offset)."""
    utc_s = np.asarray(utc_s, dtype=np.int64)
    if utc_s.size == 0:
        return np.array([], dtype=object)
    local = _to_local(utc_s, tz)
    off = (local - utc_s) // 60
    text = np.datetime_as_string(local.astype("datetime64[s]"), unit="s")
    uniq, inv = np.unique(off, return_inverse=True)
    suffix = np.array([("+" if o >= 0 else "-") + f"{abs(o) // 60:02d}:{abs(o) % 60:02d}" for o in uniq])
    return np.char.add(text.astype("U19"), suffix[inv]).astype(object)


def _money(cents: np.ndarray) -> np.ndarray:
    cents = np.asarray(cents, dtype=np.int64)
    uniq, inv = np.unique(cents, return_inverse=True)
    return np.array([f"{c // 100}.{c % 100:02d}" for c in uniq], dtype=object)[inv] if cents.size else \
        np.array([], dtype=object)


def _uniform_between(rng, lo, hi):
    lo = np.asarray(lo, dtype=np.int64)
    hi = np.asarray(hi, dtype=np.int64)
    return lo + (rng.random(lo.shape) * np.maximum(hi - lo, 0)).astype(np.int64)


def _daytime_between(rng, lo, hi, tz, start_h=7, end_h=21):
    """A random instant in [lo, hi] (UTC s), moved into local daytime when that stays inside."""
    cand = _uniform_between(rng, lo, hi)
    if cand.size == 0:
        return cand
    local = _to_local(cand, tz)
    day = local // DAY_S
    tod = local % DAY_S
    night = (tod < start_h * 3600) | (tod >= end_h * 3600)
    moved_day = np.where(tod >= end_h * 3600, day + 1, day)
    moved_local = moved_day * DAY_S + start_h * 3600 + (rng.random(cand.size) * (end_h - start_h) * 3600).astype(np.int64)
    moved = _localize(moved_local, tz)
    use = night & (moved >= lo) & (moved <= hi)
    return np.where(use, moved, cand)


# --- physios and rosters ------------------------------------------------------------------------

def _physios(rng, n: int):
    """Names, kinds and weekly roster blocks (weekday, start minute, end minute)."""
    kinds = np.where(rng.random(n) < 0.8, "full", "part")
    kinds[0] = "full"
    firsts = rng.permutation(FIRST_NAMES_F + FIRST_NAMES_M)
    lasts = rng.permutation(LAST_NAMES)
    names, rosters = [], []
    for i in range(n):
        names.append(f"{firsts[i % len(firsts)]} {lasts[(i * 7) % len(lasts)]}")
        blocks = []
        if kinds[i] == "full":
            for wd in range(5):
                blocks += [(wd, 480, 720), (wd, 780, 1020)]
            if rng.random() < 0.3:
                blocks.append((5, 480, 720))
        else:
            ndays = 3 + int(rng.random() < 0.5)
            days = np.sort(rng.choice(5, size=ndays, replace=False))
            mornings = rng.random() < 0.5
            for wd in days:
                if mornings:
                    blocks.append((int(wd), 480, 780))
                else:
                    blocks += [(int(wd), 480, 720), (int(wd), 780, 1020)]
            if rng.random() < 0.15:
                blocks.append((5, 480, 720))
        rosters.append(blocks)
    return names, kinds, rosters


def _patterns(rng, length: int, count: int = 64, gap15: float = 0.08, gap30: float = 0.02):
    """Ways to fill a block of ``length`` minutes: (offset, duration) lists on a 15-minute grid."""
    out = []
    sizes = np.array([30, 45, 60])
    probs = np.array([0.58, 0.25, 0.17])
    for _ in range(count):
        t, items = 0, []
        while t < length:
            r = rng.random()
            if r < gap15:
                t += 15
                continue
            if r < gap15 + gap30:
                t += 30
                continue
            fit = sizes[t + sizes <= length]
            if fit.size == 0:
                break
            p = probs[: fit.size] / probs[: fit.size].sum()
            d = int(rng.choice(fit, p=p))
            items.append((t, d))
            t += d
        out.append(items)
    return out


def _slack_probability(days: np.ndarray, d0: int, d1: int) -> np.ndarray:
    """Share of blocks filled loosely: higher in summer and around Christmas, falling over time
    (the practice grows)."""
    date = days.astype("datetime64[D]")
    month = (date.astype("datetime64[M]").astype(np.int64) % 12) + 1
    dom = (date - date.astype("datetime64[M]")).astype(np.int64) + 1
    season = ((month == 7) | (month == 8) | ((month == 12) & (dom >= 15)) | ((month == 1) & (dom <= 6)))
    trend = 0.18 - 0.12 * (days - d0) / max(d1 - d0, 1)
    return np.clip(trend + 0.30 * season, 0, 1)
