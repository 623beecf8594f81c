"""The registration session: encode once, register, add a click, correct a Prompt Y, reject and refit — each on the
held views, each giving an updated transform — and the quick affine shown before the final fit.

On a synthetic 2D pair (a body, two dark 'lungs', a bright blob; the moving image shifted by 6, −4 mm LPS) with the
weight-free deterministic backend (``test-patches``, models/patches.py).
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from PromptRegLib.core.image import Image
from PromptRegLib.errors import Cancelled, UsageError
from PromptRegLib.models import load_model
from PromptRegLib.models.cache import EmbeddingCache
from PromptRegLib.pipeline.options import Prompts, RegistrationOptions
from PromptRegLib.pipeline.registration import register, register_views
from PromptRegLib.prompting.pairs import PairOptions
from PromptRegLib.pipeline.session import RegistrationSession, encode
from PromptRegLib.transform.fit import FitOptions

SHIFT_LPS = (6.0, -4.0)
#: the lungs and the blob (R, A mm); the third click is added later
CLICKS_RAS = [[40.0, 0.0], [-40.0, 0.0], [0.0, -30.0]]
FAST_FIT = FitOptions(working_voxels=20_000, control_spacing_mm=(60.0,), max_iterations=150, feature_weight=0.0)
#: no sampled pairs and no warps (a warp re-encodes its warped seed slice: nothing encoding early could hold)
OPTIONS = RegistrationOptions(model="test-patches", fit=FAST_FIT, pairs=PairOptions(auto_pairs=0, warps=0))

pytestmark = pytest.mark.usefixtures("one_thread")


def phantom(shift_lps=(0.0, 0.0), seed: int = 0, blob_value: float = 0.8) -> Image:
    """A body with two dark 'lungs' and a bright blob on 96 × 88 pixels of 2 mm, moved by ``shift_lps``."""
    size, spacing = np.array([96, 88]), 2.0
    origin = -spacing * (size - 1) / 2
    y, x = np.mgrid[: size[1], : size[0]]
    points = np.stack([x, y], -1) * spacing + origin - np.asarray(shift_lps)
    values = np.where(((points / [85.0, 75.0]) ** 2).sum(-1) <= 1, 0.3, 0.0)
    for centre, radii, value in (((-40.0, 0.0), (22.0, 30.0), 0.05), ((40.0, 0.0), (20.0, 28.0), 0.05),
                                 ((0.0, 30.0), (15.0, 15.0), blob_value)):
        values[(((points - centre) / radii) ** 2).sum(-1) <= 1] = value
    values = values + np.random.default_rng(seed).normal(0, 0.02, values.shape)
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetSpacing((spacing, spacing))
    image.SetOrigin(origin.tolist())
    return Image(image, f"phantom-{seed}")


@pytest.fixture(scope="module")
def pair():
    return phantom(), phantom(SHIFT_LPS, seed=1)


@pytest.fixture
def session():
    return RegistrationSession(load_model("test-patches", cache=EmbeddingCache(False)), OPTIONS)


@pytest.fixture
def registered(session, pair):
    session.register(*pair, CLICKS_RAS[:2])
    return session


def probe(result, points_lps=((-30.0, 10.0), (35.0, -5.0), (0.0, 25.0), (10.0, -40.0))) -> np.ndarray:
    transform = result.transform.to_sitk()
    return np.array([transform.TransformPoint(list(p)) for p in points_lps])


def test_encode_then_register_encodes_nothing_more(session, pair):
    views = session.encode(*pair)
    assert views.fixed.encoded == views.fixed.shape[0] and views.moving.encoded == views.moving.shape[0]
    result = session.register(*pair, CLICKS_RAS[:2])
    assert session.views is views and result.fixed_view is views.fixed
    assert result.report["embedding_cache"] == {"hits": 0, "misses": 0}  # every slice was held already
    assert result.report["encoder"]["slices"] == 0
    assert all(p.accepted for p in result.pairs)
    np.testing.assert_allclose(result.transform.affine_offset, SHIFT_LPS, atol=2.0)


def test_the_quick_affine_comes_first_and_the_final_transform_is_registers_own(session, pair):
    seen = []
    result = session.register(*pair, CLICKS_RAS[:2], on_affine=lambda quick: seen.append(
        ("affine", quick.transform.control_displacement is None, quick.transform.affine_offset.copy())),
        progress=lambda stage, *rest: seen.append(("progress", stage)))
    shown = [i for i, event in enumerate(seen) if event[0] == "affine"]
    deformation = [i for i, event in enumerate(seen) if event[0] == "progress" and "deformation" in event[1]]
    assert len(shown) == 1 and seen[shown[0]][1], "one quick affine, without a field"
    assert deformation and shown[0] < deformation[0], "shown before the deformable fit"
    np.testing.assert_allclose(seen[shown[0]][2], SHIFT_LPS, atol=2.0)
    assert result.transform.control_displacement is not None
    plain = register(*pair, CLICKS_RAS[:2], OPTIONS, model=load_model("test-patches", cache=EmbeddingCache(False)))
    np.testing.assert_allclose(probe(result), probe(plain), atol=0.05)


def test_add_click_pairs_one_more_prompt_and_refits_from_the_current_transform(registered):
    before = registered.result
    result = registered.add_click(CLICKS_RAS[2])
    assert [p.name for p in result.pairs] == ["Prompt 1", "Prompt 2", "Prompt 3"]
    assert result.pairs[2].accepted, result.pairs[2].rejected_because
    assert result.report["fit"]["initial_affine"].startswith("warm start")
    assert result.report["session"]["added"] == ["Prompt 3"]
    assert not np.allclose(probe(result), probe(before))
    assert len(before.pairs) == 2 and registered.result is result  # the earlier result itself is left as it was


def test_a_click_repeating_a_pair_is_kept_rejected_and_changes_nothing(registered):
    before = registered.result
    result = registered.add_click([41.0, 1.0])  # the first lung again
    assert result.pairs[-1].name == "Prompt 3" and not result.pairs[-1].accepted
    assert result.pairs[-1].rejected_because == "duplicate of Prompt 1"
    assert result.transform is before.transform


def test_correct_segments_roi_y_at_the_moved_prompt_y_and_refits(registered):
    before = registered.result
    moved_ras = [-before.pairs[0].prompt_y_lps[0] + 3.0, -before.pairs[0].prompt_y_lps[1]]
    result = registered.correct("Prompt 1", moved_ras)
    corrected = result.pairs[0]
    np.testing.assert_allclose(corrected.prompt_y_lps, [-moved_ras[0], -moved_ras[1]])
    assert corrected.quality["corrected"] and corrected.accepted
    assert result.report["fit"]["initial_affine"].startswith("warm start")
    assert not np.allclose(probe(result), probe(before))
    assert before.pairs[0].prompt_y_lps is not corrected.prompt_y_lps


def test_reject_refits_without_the_pair_and_a_later_refit_uses_it_again(registered):
    registered.add_click(CLICKS_RAS[2])
    with_all = registered.result
    affine = RegistrationOptions(model="test-patches", fit=FitOptions(transform="affine", feature_weight=0.0))
    result = registered.reject(["Prompt 3"], affine)
    assert [p.rejected_by_user for p in result.pairs] == [False, False, True]
    assert result.transform.control_displacement is None and not np.allclose(probe(result), probe(with_all))
    again = registered.reject([], affine)
    assert all(p.accepted for p in again.pairs)
    with pytest.raises(Exception, match="no ROI pair left"):
        registered.reject(["Prompt 1", "Prompt 2", "Prompt 3"])
    assert registered.result is again


def test_other_images_drop_the_state_and_a_change_then_is_a_clear_error(registered, pair):
    old_views = registered.views
    other = (phantom(seed=2, blob_value=0.6), phantom(SHIFT_LPS, seed=3, blob_value=0.6))
    registered.encode(*other)
    assert registered.views is not old_views and registered.result is None
    assert registered.views.images[0].source == "phantom-2"
    with pytest.raises(UsageError, match="images changed"):
        registered.add_click(CLICKS_RAS[2])


def test_a_cancelled_change_leaves_the_result_as_it_was(registered):
    before = registered.result
    with pytest.raises(Cancelled):
        registered.add_click(CLICKS_RAS[2], cancel=lambda: True)
    assert registered.result is before and len(before.pairs) == 2
    assert registered.add_click(CLICKS_RAS[2]).pairs[2].accepted  # and the session still works


def test_encode_for_scripts_serves_a_later_registration(pair):
    model = load_model("test-patches", cache=EmbeddingCache(False))
    views = encode(*pair, OPTIONS, model=model)
    held = register_views(views, Prompts.of(CLICKS_RAS[:2]), OPTIONS)
    assert held.report["embedding_cache"] == {"hits": 0, "misses": 0}
    again = register(*pair, CLICKS_RAS[:2], OPTIONS, model=views.segmenter)  # new views: the model's memory cache
    assert again.report["embedding_cache"]["misses"] == 0 and again.report["embedding_cache"]["hits"] > 0
