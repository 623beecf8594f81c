"""Cube views for native-3D models: exact maps between cubes, working voxels and LPS; the pipeline end to end.

The fast deterministic cube backend (``test-patches-3d``) stands in for SAM-Med3D here; SAM-Med3D's own
network and checkpoint loading are tested in test_sammed3d_model.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from PromptRegLib.apps.cli import main
from PromptRegLib.core.image import Image
from PromptRegLib.errors import Cancelled, CheckpointError, InputImageError, PromptError
from PromptRegLib.models import load_model
from PromptRegLib.models.cache import EmbeddingCache
from PromptRegLib.pipeline.options import Prompts, RegistrationOptions
from PromptRegLib.pipeline.registration import register
from PromptRegLib.views.cubes import CubeView, _refine_peak

pytestmark = pytest.mark.usefixtures("one_thread")


def oblique_volume(seed: int = 0) -> Image:
    """A ball on a noisy background, stored on an oblique, anisotropic grid."""
    angle = 0.3
    image = sitk.Image([40, 36, 24], sitk.sitkFloat32)
    image.SetSpacing((2.0, 2.5, 4.0))
    c, s = np.cos(angle), np.sin(angle)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    image.SetOrigin((-40.0, -45.0, -46.0))
    index = np.stack(np.meshgrid(*[np.arange(n) for n in (24, 36, 40)], indexing="ij"), -1)[..., ::-1]
    points = index @ (np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())).T + image.GetOrigin()
    centre = np.array(image.GetOrigin()) + np.array(image.GetDirection()).reshape(3, 3) @ (np.array([20, 18, 12]) *
                                                                                          np.array(image.GetSpacing()))
    values = 0.2 + np.random.default_rng(seed).normal(0, 0.02, points.shape[:3])
    values[np.linalg.norm(points - centre - np.array([seed * 12.0, 0, 0]), axis=-1) <= 14] = 0.9
    result = sitk.GetImageFromArray(values.astype(np.float32))
    result.CopyInformation(image)
    return Image(result), centre


@pytest.fixture(scope="module")
def model():
    return load_model("test-patches-3d", device="cpu", cache=EmbeddingCache(False))


def test_cube_maps_exactly_on_an_oblique_anisotropic_image(model):
    image, centre = oblique_volume()
    view = CubeView(image, model)
    np.testing.assert_allclose(view.grid.direction, np.diag([-1.0, -1.0, 1.0])[:, ::-1])  # RAS+ cube axes
    cube = view.cube_at(centre)
    # a cube voxel's LPS position and back; neighbours one model spacing apart
    voxels = np.random.default_rng(4).uniform(0, model.cube_size - 1, size=(50, 3))
    np.testing.assert_allclose(cube.grid.lps_to_numpy_index(cube.grid.numpy_index_to_lps(voxels)), voxels, atol=1e-9)
    neighbours = cube.grid.numpy_index_to_lps(np.array([[3.0, 4, 5], [4, 4, 5], [3, 5, 5], [3, 4, 6]]))
    np.testing.assert_allclose(np.linalg.norm(neighbours[1:] - neighbours[0], axis=1), model.spacing_mm)
    # a linear field over the cube (value = cube axis-2 coordinate) sampled at working voxels is exact
    ramp = torch.arange(model.cube_size, dtype=torch.float32).expand(model.cube_size, model.cube_size, -1)
    sampled = view._sample_cube_field(cube, ramp[None], cell_centred=False, outside=-1.0)[0]
    voxels = np.argwhere(sampled != -1.0)
    expected = cube.grid.lps_to_numpy_index(view.voxel_to_lps(voxels.astype(float)))[:, 2]
    assert len(voxels) > 500
    np.testing.assert_allclose(sampled[tuple(voxels.T)], np.clip(expected, 0, model.cube_size - 1), atol=1e-3)


def test_peaks_are_refined_between_feature_cells():
    score = np.zeros((20, 20, 20))
    score[9, 10, 10] = score[10, 10, 10] = 1.0      # two neighbouring voxels match equally
    refined = _refine_peak(score, (9, 10, 10), 3)
    np.testing.assert_allclose(refined, [9.5, 10.0, 10.0])


def test_cube_view_registers_a_shifted_ball_and_ignores_storage(model):
    fixed, centre = oblique_volume()
    moving, _ = oblique_volume(seed=1)                      # the ball 12 mm (a feature cell) further along L
    ras = centre * np.array([-1, -1, 1])
    results = []
    for moving_image in (moving, Image(sitk.DICOMOrient(moving.sitk_image, "RAS"))):
        result = register(fixed, moving_image, [ras], RegistrationOptions(pairs_only=True),
                          model=load_model("test-patches-3d", cache=EmbeddingCache(False)))
        (pair,) = result.pairs
        assert result.report["native_3d"] is True
        assert {"iou_x", "iou_y", "cycle_ok", "prototype_cosine", "size_ratio"} <= set(pair.quality)
        assert pair.accepted, pair.rejected_because
        shift = result.moving_view.centroid_lps(pair.roi_y.mask) - result.fixed_view.centroid_lps(pair.roi_x.mask)
        results.append(shift)
    np.testing.assert_allclose(results[0], [12.0, 0.0, 0.0], atol=4.0)
    np.testing.assert_allclose(results[0], results[1], atol=0.5)


def test_cube_view_cancel_boxes_and_2d_refusal(model, data_dir, tmp_path, capsys):
    fixed, centre = oblique_volume()
    ras = centre * np.array([-1, -1, 1])
    with pytest.raises(Cancelled):
        register(fixed, fixed, [ras], RegistrationOptions(pairs_only=True), cancel=lambda: True,
                 model=load_model("test-patches-3d", cache=EmbeddingCache(False)))
    with pytest.raises(PromptError, match="point prompts only"):
        register(fixed, fixed, Prompts(boxes_ras=(np.r_[ras - 2, ras + 2],)), RegistrationOptions(pairs_only=True),
                 model=load_model("test-patches-3d", cache=EmbeddingCache(False)))
    fixed_2d = str(data_dir / "ctchest4" / "pair2d_fixed.nrrd")
    code = main(["register", fixed_2d, fixed_2d, "-o", str(tmp_path / "out"), "--prompt", "-315,-399",
                 "--model", "test-patches-3d", "--quiet"])
    assert code == InputImageError.exit_code and "3D model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_sam_med3d_without_a_checkpoint_says_where_to_get_one(data_dir, tmp_path, capsys):
    code = main(["segment", str(data_dir / "ctchest4" / "ct.nrrd"), "--prompt", "0,0,-200", "--model", "sam-med3d",
                 "-o", str(tmp_path / "x.seg.nrrd"), "--quiet"])
    assert code == CheckpointError.exit_code and "--checkpoint" in capsys.readouterr().err
