"""Issue K: a colour moving image stays colour in the outputs, an integer one keeps its type."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from PromptRegLib.fit import FitOptions
from PromptRegLib.imageio import read_image
from PromptRegLib.outputs import warp_image, write_registration
from PromptRegLib.prompting.pairs import PairOptions
from PromptRegLib.registration import register

SHIFT_PX = (14.0, -9.0)


def colour_pair(data_dir, folder):
    """The H&E slide shrunk 4× (RGB, uint8, 1.43 mm pixels from its DPI header) and a copy shifted by SHIFT_PX."""
    slide = sitk.Shrink(sitk.ReadImage(str(data_dir / "histology_birl" / "lung_lesion_HE.jpg")), [4, 4])
    shift = sitk.TranslationTransform(2, [v * s for v, s in zip(SHIFT_PX, slide.GetSpacing())])
    moved = sitk.Resample(slide, slide, shift, sitk.sitkLinear, 255.0)     # moved(x) = slide(x + shift)
    sitk.WriteImage(slide, str(folder / "fixed.nrrd"))
    sitk.WriteImage(moved, str(folder / "moving.nrrd"))
    return folder / "fixed.nrrd", folder / "moving.nrrd", slide


def test_a_colour_pair_registers_and_its_warped_image_stays_colour(data_dir, tmp_path, model):
    fixed, moving, slide = colour_pair(data_dir, tmp_path)
    tissue = np.argwhere(sitk.GetArrayFromImage(slide).mean(axis=-1) < 180)          # (row, column)
    click = tissue.mean(axis=0)[::-1]                                                # (x, y) pixels
    result = register(fixed, moving, prompts_px=[click], pair_options=PairOptions(auto_pairs=0, warps=0),
                      fit_options=FitOptions(transform="affine", feature_weight=0), cache=model.cache)
    write_registration(result, tmp_path / "out")
    warped = sitk.ReadImage(str(tmp_path / "out" / "warped_moving.nrrd"))
    assert warped.GetNumberOfComponentsPerPixel() == 3 and warped.GetPixelID() == sitk.sitkVectorUInt8
    assert warped.GetSize() == slide.GetSize()
    # fixed point x lies at x − shift in the moving image
    moved_to = np.array(result.transform.to_sitk().TransformPoint(slide.TransformContinuousIndexToPhysicalPoint(
        click.tolist())))
    expected = np.array(slide.TransformContinuousIndexToPhysicalPoint((click - SHIFT_PX).tolist()))
    assert np.linalg.norm(moved_to - expected) < 2 * slide.GetSpacing()[0]
    # the warped colour image is closer to the fixed slide where tissue is
    inside = sitk.GetArrayFromImage(slide).mean(axis=-1) < 180
    before = np.abs(sitk.GetArrayFromImage(sitk.ReadImage(str(moving))).astype(float) - sitk.GetArrayFromImage(slide))
    after = np.abs(sitk.GetArrayFromImage(warped).astype(float) - sitk.GetArrayFromImage(slide))
    assert after[inside].mean() < 0.9 * before[inside].mean()         # textured tissue: 1 px off still differs


def test_an_integer_moving_image_is_warped_in_its_own_type(tmp_path):
    values = np.array([[-32768, -1024, 0, 3071, 32767]] * 8 * 2, dtype=np.int16).reshape(8, 10)
    stored = sitk.GetImageFromArray(values)
    stored.SetSpacing([0.7, 0.7])
    sitk.WriteImage(stored, str(tmp_path / "ct.nrrd"))
    moving = read_image(tmp_path / "ct.nrrd")
    warped = warp_image(moving, moving, sitk.Transform(2, sitk.sitkIdentity))
    assert warped.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(warped), values)
