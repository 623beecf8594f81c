"""A colour pair is registered on its luminance and written back in colour; integers keep their type."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from PromptRegLib.core.image import read_image
from PromptRegLib.io.outputs import warp_image, write_registration
from PromptRegLib.pipeline.options import RegistrationOptions
from PromptRegLib.pipeline.registration import register
from PromptRegLib.prompting.pairs import PairOptions
from PromptRegLib.transform.fit import FitOptions

LEFT_LUNG = [(-315.0, -399.2)]


def as_8bit(path, folder, name: str, colour: bool):
    """The CT slice windowed to 8 bits, stored grey or as RGB with three equal channels (same luminance)."""
    image = sitk.Cast(sitk.IntensityWindowing(sitk.ReadImage(str(path)), -1024, 600, 0, 255), sitk.sitkUInt8)
    if colour:
        image = sitk.Compose([image] * 3)
    sitk.WriteImage(image, str(folder / f"{name}.nrrd"))
    return folder / f"{name}.nrrd"


def test_a_colour_pair_registers_as_its_luminance_and_its_warped_image_stays_colour(data_dir, tmp_path, model):
    ct = data_dir / "ctchest4"
    options = RegistrationOptions(pairs=PairOptions(auto_pairs=0, warps=0),
                                  fit=FitOptions(transform="affine", feature_weight=0))
    results = {}
    for colour in (False, True):
        fixed = as_8bit(ct / "pair2d_fixed.nrrd", tmp_path, f"fixed-{colour}", colour)
        moving = as_8bit(ct / "pair2d_moving.nrrd", tmp_path, f"moving-{colour}", colour)
        results[colour] = register(fixed, moving, LEFT_LUNG, options, model=model)
        write_registration(results[colour], tmp_path / f"out-{colour}")
    warped = sitk.ReadImage(str(tmp_path / "out-True" / "warped_moving.nrrd"))
    assert warped.GetNumberOfComponentsPerPixel() == 3 and warped.GetPixelID() == sitk.sitkVectorUInt8
    assert warped.GetSize() == sitk.ReadImage(str(tmp_path / "fixed-True.nrrd")).GetSize()
    grey = sitk.ReadImage(str(tmp_path / "out-False" / "warped_moving.nrrd"))
    assert grey.GetPixelID() == sitk.sitkUInt8
    channels = sitk.GetArrayFromImage(warped)
    assert np.abs(channels.astype(int) - sitk.GetArrayFromImage(grey)[..., None]).max() <= 1
    assert np.allclose(results[True].transform.affine_matrix, results[False].transform.affine_matrix)
    assert np.allclose(results[True].transform.affine_offset, results[False].transform.affine_offset)


def test_an_integer_moving_image_is_warped_in_its_own_type(tmp_path):
    values = np.array([[-32768, -1024, 0, 3071, 32767]] * 8 * 2, dtype=np.int16).reshape(8, 10)
    stored = sitk.GetImageFromArray(values)
    stored.SetSpacing([0.7, 0.7])
    sitk.WriteImage(stored, str(tmp_path / "ct.nrrd"))
    moving = read_image(tmp_path / "ct.nrrd")
    warped = warp_image(moving, moving, sitk.Transform(2, sitk.sitkIdentity))
    assert warped.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(warped), values)
