"""A pair whose cycle check fails is dropped and reported, not silently used; when every user pair fails,
sampled pairs stand in (unless none were asked for).

The moving image is the fixed CT slice with its left lung filled with soft tissue: the only lung-like
region left is the mirror-symmetric right lung. With a search radius wide enough to reach it, inverse
prompting of the left lung finds the right lung; inverted back, that ROI lands on the fixed right lung,
outside ROI X, so the cycle check fails.
"""
import SimpleITK as sitk

from PromptRegLib import register
from PromptRegLib.pipeline.options import RegistrationOptions
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
    result = register(fixed_path, moving_path, [(-315.0, -399.2)], RegistrationOptions(pairs=options, pairs_only=True),
                      model=model)
    (pair,) = result.pairs
    roi_y = result.moving_mask(pair)
    assert (roi_y & (labels == 5)).sum() > 0.5 * roi_y.sum()  # it did land on the twin
    assert pair.quality["cycle_ok"] is False
    assert not pair.accepted and "cycle" in pair.rejected_because


def test_a_click_in_the_air_fails_and_sampled_pairs_stand_in_unless_none_were_asked_for(data_dir, model):
    """Never end with nothing when something sensible exists. A click in the air beside the body gives no usable
    pair; sampled prompts over the anatomy (8, as the fallback takes) then give the transform. Asked for none
    (``auto_pairs`` 0, from any entry point), none are sampled, not even in its place."""
    fixed = data_dir / "ctchest4" / "pair2d_fixed.nrrd"
    moving = data_dir / "ctchest4" / "pair2d_moving.nrrd"
    result = register(fixed, moving, [(-238.8, -307.8)], RegistrationOptions(pairs=PairOptions(warps=0, auto_pairs=8),
                                                                             pairs_only=True), model=model)
    user, *sampled = result.pairs
    assert user.source == "user" and not user.accepted, (user.name, user.rejected_because)
    assert sampled and all(p.source == "auto" for p in sampled)
    assert any(p.accepted for p in sampled), [(p.name, p.rejected_because) for p in sampled]
    none_asked = register(fixed, moving, [(-238.8, -307.8)],
                          RegistrationOptions.from_mapping({"auto_pairs": 0, "warps": 0, "pairs_only": True}),
                          model=model)
    assert [p.source for p in none_asked.pairs] == ["user"] and not none_asked.report["fallback_to_auto_pairs"]
