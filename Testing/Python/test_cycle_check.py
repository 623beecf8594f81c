"""A pair whose cycle check fails is dropped and reported, not silently used; when every user pair fails,
sampled pairs stand in.

The moving image is the fixed CT slice with its left lung filled with soft tissue: the only lung-like
region left is the mirror-symmetric right lung. With a search radius wide enough to reach it, inverse
prompting of the left lung finds the right lung; inverted back, that ROI lands on the fixed right lung,
outside ROI X, so the cycle check fails.
"""
import SimpleITK as sitk

from PromptRegLib import register
from PromptRegLib.prompting.inverse import InverseOptions
from PromptRegLib.prompting.pairs import PairOptions


def test_twin_structure_match_fails_the_cycle_check_and_is_dropped(data_dir, model, tmp_path):
    fixed_path = data_dir / "ctchest4" / "pair2d_fixed.nrrd"
    fixed = sitk.ReadImage(str(fixed_path))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "ctchest4" / "pair2d_fixed_labels.nii.gz")))
    array = sitk.GetArrayFromImage(fixed).copy()
    array[labels == 6] = 40  # left lung → soft tissue (HU)
    moving = sitk.GetImageFromArray(array)
    moving.CopyInformation(fixed)
    moving_path = tmp_path / "no_left_lung.nrrd"
    sitk.WriteImage(moving, str(moving_path))

    options = PairOptions(auto_pairs=0, warps=0, inverse=InverseOptions(search_radius_mm=1000.0),
                          fallback_auto_pairs=0)
    result = register(fixed_path, moving_path, [(-315.0, -399.2)], pair_options=options, pairs_only=True,
                      cache=model.cache)
    (pair,) = result.pairs
    roi_y = result.moving_mask(pair)
    assert (roi_y & (labels == 5)).sum() > 0.5 * roi_y.sum()  # it did land on the twin
    assert pair.quality["cycle_ok"] is False
    assert not pair.accepted and "cycle" in pair.rejected_because


def test_when_every_user_pair_fails_sampled_pairs_stand_in_and_the_report_says_so(data_dir, model):
    """Issue I: never end with nothing when something sensible exists. A click in the air beside the body gives
    no usable pair; sampled prompts over the anatomy then give the transform, named as such."""
    fixed = data_dir / "ctchest4" / "pair2d_fixed.nrrd"
    moving = data_dir / "ctchest4" / "pair2d_moving.nrrd"
    options = PairOptions(auto_pairs=0, warps=0)  # the default fallback: 8 sampled prompts
    result = register(fixed, moving, [(-238.8, -307.8)], pair_options=options, pairs_only=True, cache=model.cache)
    user, *fallback = result.pairs
    assert user.source == "user" and not user.accepted, (user.name, user.rejected_because)
    assert fallback and all(p.source == "fallback" for p in fallback)
    assert any(p.accepted for p in fallback), [(p.name, p.rejected_because) for p in fallback]
    assert result.report["fallback_to_auto_pairs"] is True
