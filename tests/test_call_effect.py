"""Call effect analysis: the Mantel-Haenszel estimators by hand, the rows from a real database, the
messages when data is short, and the notebook through papermill."""
from __future__ import annotations

import datetime as dt
import math

import pandas as pd
import pytest

from clinic_lib.core import db
from clinic_lib.modeling.call_effect import (
    OBSERVATIONAL_NOTE,
    assign_bands,
    band_cuts,
    band_labels,
    call_list_rows,
    holdout_effect,
    mantel_haenszel,
    observational_table,
    strata_counts,
)

from reception_data import load_clinic

S1 = dt.date(2026, 3, 30)


def test_mantel_haenszel_by_hand():
    # band A: 20 to call (2 failed), 10 held out (3 failed); band B: 30 (12), 10 (6)
    strata = pd.DataFrame({"n1": [20, 30], "y1": [2, 12], "n0": [10, 10], "y0": [3, 6]}, index=["A", "B"])
    mh = mantel_haenszel(strata)
    # RD = [(2*10 - 3*20)/30 + (12*10 - 6*30)/40] / [20*10/30 + 30*10/40] = (-4/3 - 3/2) / (20/3 + 15/2) = -0.2
    assert mh["risk_difference"] == pytest.approx(-0.2)
    # Sato: P = 0 + (900*6 - 100*12 + 300*(10-30)/2)/1600 = 0.75; Q = (2*7 + 3*18)/60 + (12*4 + 6*18)/80 = 3.08333
    var = (-0.2 * 0.75 + (68 / 60 + 156 / 80)) / (20 / 3 + 15 / 2) ** 2
    assert mh["rd_se"] == pytest.approx(math.sqrt(var)) and mh["rd_se"] == pytest.approx(0.120896, abs=1e-6)
    # RR = (2*10/30 + 12*10/40) / (3*20/30 + 6*30/40) = (11/3) / 6.5
    assert mh["relative_risk"] == pytest.approx((11 / 3) / 6.5)
    # Greenland-Robins: [(200*5 - 6*30)/900 + (300*18 - 72*40)/1600] / ((11/3) * 6.5)
    assert mh["log_rr_se"] == pytest.approx(math.sqrt((820 / 900 + 2520 / 1600) / ((11 / 3) * 6.5)))


def test_one_band_gives_the_textbook_binomial_figures():
    mh = mantel_haenszel(pd.DataFrame({"n1": [400], "y1": [100], "n0": [100], "y0": [40]}))
    assert mh["risk_difference"] == pytest.approx(0.25 - 0.40)
    assert mh["rd_se"] == pytest.approx(math.sqrt(0.25 * 0.75 / 400 + 0.4 * 0.6 / 100))
    assert mh["relative_risk"] == pytest.approx(0.25 / 0.40)
    assert mh["log_rr_se"] == pytest.approx(math.sqrt(1 / 100 - 1 / 400 + 1 / 40 - 1 / 100))


def rows_frame(records, cuts=(0.10, 0.25)):
    frame = pd.DataFrame(records, columns=["risk_score", "holdout", "called", "reached", "has_outcome", "failed"])
    frame["band"] = assign_bands(frame["risk_score"], cuts)
    return frame


def test_holdout_effect_interval_and_messages():
    # one band: 40 to call, 8 failed (20 %); 40 held out, 16 failed (40 %)
    rows = rows_frame([(0.3, False, True, True, True, i < 8) for i in range(40)]
                      + [(0.3, True, False, False, True, i < 16) for i in range(40)]
                      + [(0.3, True, False, False, False, False)])  # no outcome: left out
    e = holdout_effect(rows)
    se = math.sqrt(0.2 * 0.8 / 40 + 0.4 * 0.6 / 40)
    assert (e.n_called, e.n_held_out) == (40, 40)
    assert e.risk_difference == pytest.approx(-0.2)
    assert (e.rd_low, e.rd_high) == (pytest.approx(-0.2 - 1.959964 * se, abs=1e-6),
                                     pytest.approx(-0.2 + 1.959964 * se, abs=1e-6))
    log_se = math.sqrt(1 / 8 - 1 / 40 + 1 / 16 - 1 / 40)
    assert e.relative_risk == pytest.approx(0.5)
    assert e.rr_high == pytest.approx(math.exp(math.log(0.5) + 1.959964 * log_se), abs=1e-6)
    assert e.messages == []
    assert e.summary().startswith("Calling changed the failure rate by -20.0% (95% interval")
    assert e.table().loc["relative risk (called / held out)", "no effect would be"] == 1.0

    off = holdout_effect(rows_frame([(0.3, False, True, True, True, True)] * 5))
    assert not off.estimated and "CALL_HOLDOUT_SHARE = 0" in off.messages[0]
    apart = holdout_effect(rows_frame([(0.3, False, True, True, True, True), (0.05, True, False, False, True, False)]))
    assert not apart.estimated and apart.messages == [
        "No risk band holds both held-out appointments and appointments to call: choose wider bands or a "
        "longer date range."]
    none = holdout_effect(rows_frame([]))
    assert none.messages == ["There are no evening lists in this date range: nothing to compare."]
    few = holdout_effect(rows_frame([(0.3, False, True, True, True, False), (0.3, True, True, False, True, False)]))
    assert few.risk_difference == 0.0 and few.relative_risk is None
    assert few.messages == [
        "One group had no failure at all: the relative risk is not defined.",
        "Only 1 held-out appointments have an outcome: the interval is wide; read it as a first look.",
        "1 held-out appointments were called anyway; they stay in the held-out group (the comparison is by "
        "assignment), which makes the effect look smaller than it is."]


def test_bands():
    assert band_labels((0.1, 0.25)) == ["< 0.10", "0.10-0.25", ">= 0.25"]
    assert band_labels(()) == ["all"]
    assert list(assign_bands([0.05, 0.1, 0.2, 0.25, 0.9], (0.1, 0.25))) == [
        "< 0.10", "0.10-0.25", "0.10-0.25", ">= 0.25", ">= 0.25"]
    assert band_cuts("0.2, 0.5") == (0.2, 0.5) and band_cuts([]) == ()
    for bad in ("0.5,0.2", "x", "0,0.5", "0.3,1.2"):
        with pytest.raises(ValueError, match="risk bands: expected increasing numbers"):
            band_cuts(bad)


@pytest.fixture
def called_clinic(engine, clinic_env, monkeypatch):
    """S1's list of the reception clinic, top 4: 102 (risk .30, failed; reached after a no_answer),
    104 (.15, attended; voicemail only), 103 (.40, failed late; held out), 101 (.05, attended; held out)."""
    monkeypatch.setenv("CALL_CAPACITY", "4")
    load_clinic(engine)
    a = db.appointments
    with db.begin_write(engine) as conn:
        for aid, status, canceled_at in ((101, "completed", None), (102, "no_show", None),
                                         (103, "canceled", "2026-03-30T10:00:00+00:00"), (104, "completed", None)):
            conn.execute(a.update().where(a.c.appointment_id == aid).values(status=status, canceled_at=canceled_at))
        listed = [(102, 0.30, 0), (104, 0.15, 0), (103, 0.40, 1), (101, 0.05, 1), (105, 0.5, 0)]
        conn.execute(db.priorities.insert(), [
            dict(day=S1.isoformat(), appointment_id=aid, rank=rank, patient_id=1, is_new_patient=0, missing_phone=0,
                 missing_consent=0, risk_score=risk, risk_bucket="medium", risk_source="model", priority_score=risk,
                 priority_reason="test", built_at="2026-03-29T18:00:00+00:00", holdout=held)
            for rank, (aid, risk, held) in enumerate(listed, start=1)])
        conn.execute(db.call_outcomes.insert(), [
            dict(appointment_id=aid, outcome=o, recorded_at="2026-03-29T18:30:00+00:00")
            for aid, o in ((102, "no_answer"), (102, "confirmed"), (104, "voicemail"))])
    return engine


def test_rows_and_both_comparisons_from_the_database(called_clinic):
    rows = call_list_rows(S1, S1, called_clinic)  # rank 5 (105) is beyond k = 4
    assert rows[["appointment_id", "holdout", "called", "reached", "has_outcome", "failed"]].values.tolist() == [
        [102, False, True, True, True, True], [104, False, True, False, True, False],
        [103, True, False, False, True, True], [101, True, False, False, True, False]]
    assert list(rows["band"]) == [">= 0.25", "0.10-0.25", ">= 0.25", "< 0.10"]
    obs = observational_table(rows)
    assert obs.loc["all bands", ["reached n", "reached failed", "not reached n", "not reached failed"]].tolist() == [
        1, 1, 1, 0]
    assert obs.loc["all bands", "difference"] == 1.0
    assert pd.isna(obs.loc[">= 0.25", "not reached failure rate"])
    assert "observational" in OBSERVATIONAL_NOTE and "who answers the phone" in OBSERVATIONAL_NOTE.lower()
    counts = strata_counts(rows)
    assert counts.values.tolist() == [[0, 0, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    e = holdout_effect(rows)
    # only the high band has both groups: 1 of 1 failed in each -> no difference
    assert (e.risk_difference, e.relative_risk, e.n_called, e.n_held_out) == (0.0, 1.0, 2, 2)
    # other bands by parameter: one band for all
    assert list(call_list_rows(S1, S1, called_clinic, bands=[])["band"].unique()) == ["all"]
    assert call_list_rows(S1 + dt.timedelta(days=1), S1 + dt.timedelta(days=3), called_clinic).empty
    with pytest.raises(ValueError, match="the date range is empty"):
        call_list_rows(S1, S1 - dt.timedelta(days=1), called_clinic)
