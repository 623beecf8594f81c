"""Pair gates: a pair's size is judged against the scale the pairs agree on, not against 1."""
from __future__ import annotations

import numpy as np
import pytest

from PromptRegLib.prompting.pairs import PairOptions, ROIPair, agree_on_size, gate
from PromptRegLib.views.base import ROI


def pair(name: str, size_ratio: float, source: str = "user", iou: float = 0.9) -> ROIPair:
    roi = ROI(np.ones((1, 4, 4), bool), iou, np.zeros(3), 0)
    quality = {"iou_x": iou, "iou_y": iou, "cycle_ok": True, "prototype_cosine": 0.8, "size_ratio": size_ratio}
    made = ROIPair(name, roi, roi, np.zeros(3), np.zeros(3), source, quality)
    made.rejected_because = gate(made, PairOptions())
    made.accepted = not made.rejected_because
    return made


def test_two_people_s_organs_of_one_scale_are_kept_and_a_wrong_structure_is_refused():
    """The moving person is larger: every right pair's cross-section is ~1.6× ROI X's; one pair landed on a smaller
    structure (0.5×): it disagrees with the others and is the one refused, with the reason."""
    pairs = [pair("kidney", 1.55), pair("liver", 1.62), pair("spleen", 1.70), pair("wrong", 0.5)]
    scale = agree_on_size(pairs, PairOptions())
    assert scale == pytest.approx(np.sqrt(1.55 * 1.62))  # the weighted median, between the middle two
    assert [p.accepted for p in pairs] == [True, True, True, False]
    assert "disagrees with the pairs' common scale 1.58" in pairs[3].rejected_because
    assert all(p.quality["common_scale"] == scale for p in pairs)


def test_one_pair_is_judged_against_1_and_a_pair_the_user_gave_is_never_refused_for_its_size():
    alone = [pair("only", 1.6)]
    agree_on_size(alone, PairOptions())
    assert not alone[0].accepted and "common scale 1.00" in alone[0].rejected_because
    given = [pair("Pair 1", 3.0, source="user pair"), pair("a", 1.0), pair("b", 1.05)]
    agree_on_size(given, PairOptions())
    assert given[0].accepted


def test_a_pair_refused_for_another_reason_stays_refused():
    failed = pair("cycle", 1.0)
    failed.quality["cycle_ok"] = False
    failed.rejected_because, failed.accepted = gate(failed, PairOptions()), False
    pairs = [failed, pair("a", 1.0), pair("b", 1.1)]
    agree_on_size(pairs, PairOptions())
    assert not pairs[0].accepted and pairs[0].rejected_because.startswith("cycle check failed")


def test_two_pairs_agree_on_their_geometric_mean():
    """Two clicks of sizes 0.89 and 1.45: neither sets the scale alone (which one sorted first decided it once)."""
    pairs = [pair("a", 0.89), pair("b", 1.45)]
    assert agree_on_size(pairs, PairOptions()) == pytest.approx(np.sqrt(0.89 * 1.45))
    assert all(p.accepted for p in pairs)
