"""Physical space at every step, on synthetic pairs with the fast deterministic backends (models/patches.py).

The same body stored with flipped, permuted, anisotropic or oblique axes — fixed or moving — must give the
same transform (compared at physical points) and ROI pairs of the same physical extent; a single-slice 3D
volume must give what its 2D image gives. Real-image versions of these checks live in test_register_ctchest.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from PromptRegLib import register
from PromptRegLib.core.grid import Grid, slicing_axis_lps
from PromptRegLib.core.image import Image, read_image
from PromptRegLib.errors import InputImageError
from PromptRegLib.models import load_model
from PromptRegLib.models.cache import EmbeddingCache
from PromptRegLib.pipeline.options import RegistrationOptions
from PromptRegLib.transform.fit import FitOptions
from PromptRegLib.views import make_views

FAST_FIT = FitOptions(working_voxels=20_000, control_spacing_mm=(60.0,), max_iterations=150)
#: LPS centres (mm), radii (mm) and intensities of the phantom's blobs; the body is an ellipsoid around them
BLOBS_3D = [((-40.0, 0.0, 0.0), (22.0, 30.0, 45.0), 0.05), ((40.0, 0.0, 0.0), (20.0, 28.0, 40.0), 0.05),
            ((0.0, 30.0, -20.0), (15.0, 15.0, 20.0), 0.8)]
CLICKS_3D_RAS = [[40.0, 0.0, 0.0], [-40.0, 0.0, 0.0], [0.0, -30.0, -20.0]]


pytestmark = pytest.mark.usefixtures("one_thread")


def phantom(shift_lps=(0.0, 0.0, 0.0), size=(48, 44, 20), spacing=(4.0, 4.0, 8.0), direction=None,
            blobs=BLOBS_3D, seed=0) -> sitk.Image:
    """A body with two dark 'lungs' and a bright blob, moved by ``shift_lps``, on the given grid."""
    dimension = len(size)
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing(spacing)
    direction = np.eye(dimension) if direction is None else np.asarray(direction, dtype=float)
    image.SetDirection(direction.ravel().tolist())
    centre_index = (np.array(size) - 1) / 2
    image.SetOrigin((-(direction * np.array(spacing)) @ centre_index).tolist())  # centred on the origin
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij"), -1)[..., ::-1]
    points = index @ (direction * np.array(spacing)).T + np.array(image.GetOrigin()) - np.array(shift_lps)
    values = np.zeros(size[::-1], np.float32)
    values[((points / np.array([85.0, 75.0, 75.0][:dimension])) ** 2).sum(-1) <= 1] = 0.3
    for centre, radii, value in blobs:
        values[(((points - np.array(centre[:dimension])) / np.array(radii[:dimension])) ** 2).sum(-1) <= 1] = value
    values += np.random.default_rng(seed).normal(0, 0.02, values.shape).astype(np.float32)
    result = sitk.GetImageFromArray(values)
    result.CopyInformation(image)
    return result


def fit_probe(result, points_lps: np.ndarray) -> np.ndarray:
    transform = result.transform.to_sitk()
    return np.array([transform.TransformPoint(p.tolist()) for p in points_lps])


def foreground_points(image: sitk.Image, count: int = 400) -> np.ndarray:
    values = sitk.GetArrayFromImage(image)
    index = np.argwhere(values > 0.15)
    index = index[np.random.default_rng(1).choice(len(index), min(count, len(index)), replace=False)]
    return np.array([image.TransformContinuousIndexToPhysicalPoint(i[::-1].astype(float).tolist()) for i in index])


def physical_box(result, pair) -> np.ndarray:
    """LPS bounding boxes of ROI X and ROI Y as seen on the images' own grids, (2, 2, d)."""
    boxes = []
    for image, mask in ((result.fixed_image, result.fixed_mask(pair)), (result.moving_image, result.moving_mask(pair))):
        points = image.index_to_lps(np.argwhere(mask)[:, ::-1].astype(float))
        boxes.append([points.min(0), points.max(0)])
    return np.array(boxes)


def run(fixed: sitk.Image, moving: sitk.Image, clicks_ras, model="test-patches", **options):
    return register(Image(fixed), Image(moving), clicks_ras, RegistrationOptions(fit=FAST_FIT, **options),
                    model=load_model(model, cache=EmbeddingCache(False)))


@pytest.fixture(scope="module")
def pair_3d():
    return phantom(), phantom(shift_lps=(6.0, -4.0, 8.0), seed=1)  # its own noise, as two scans have


@pytest.fixture(scope="module")
def reference_3d(pair_3d):
    fixed, moving = pair_3d
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a module fixture is made before the function-scoped one_thread
    try:
        return run(fixed, moving, CLICKS_3D_RAS)
    finally:
        torch.set_num_threads(threads)


def test_the_reference_run_recovers_the_shift(reference_3d, pair_3d):
    fixed, _ = pair_3d
    points = foreground_points(fixed)
    error = np.linalg.norm(fit_probe(reference_3d, points) - (points + [6.0, -4.0, 8.0]), axis=1)
    assert all(p.accepted for p in reference_3d.pairs)
    assert error.mean() < 3.0, error.mean()


#: each an axis order and sign flips at once, one per image (a flip alone on real CT: test_batch)
@pytest.mark.parametrize("which,code", [("moving", "PIR"), ("fixed", "SLA")])
def test_restored_axes_give_the_same_transform_and_pairs(reference_3d, pair_3d, which, code):
    fixed, moving = pair_3d
    if which == "moving":
        moving = sitk.DICOMOrient(moving, code)
    else:
        fixed = sitk.DICOMOrient(fixed, code)
    result = run(fixed, moving, CLICKS_3D_RAS)
    points = foreground_points(pair_3d[0])
    difference = np.linalg.norm(fit_probe(result, points) - fit_probe(reference_3d, points), axis=1)
    assert difference.mean() < 1.0, difference.mean()
    assert [p.accepted for p in result.pairs] == [p.accepted for p in reference_3d.pairs]
    for pair, reference_pair in zip(result.pairs, reference_3d.pairs):
        np.testing.assert_allclose(physical_box(result, pair), physical_box(reference_3d, reference_pair), atol=8.5)


def test_both_images_are_sliced_along_one_physical_axis(pair_3d):
    fixed, moving = pair_3d
    permuted = sitk.DICOMOrient(moving, "SLA")  # coarsest storage axis now points along another array axis
    model = type("Model", (), {"input_size": 64, "native_3d": False})()
    fixed_view, moving_view = make_views(model, Image(fixed), Image(permuted))
    assert slicing_axis_lps(Grid.of(Image(fixed))) == 2
    assert fixed_view.axis_lps == moving_view.axis_lps == 2
    np.testing.assert_allclose(fixed_view.grid.direction, moving_view.grid.direction)
    # the working grid does not depend on storage: the same voxels see the same physical points
    plain = make_views(model, Image(fixed), Image(moving))[1]
    np.testing.assert_allclose(plain.grid.origin, moving_view.grid.origin, atol=1e-6)
    np.testing.assert_allclose(plain.intensities01, moving_view.intensities01, atol=1e-4)


def test_oblique_anisotropic_storage_is_handled(reference_3d, pair_3d):
    """The moving image resampled onto an oblique grid (rotated 20° about S, 3 × 5 × 6 mm voxels): a coarser
    image with a larger bounding box, so not the same answer — but a good one, through the same path."""
    angle = np.deg2rad(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    _, moving = pair_3d
    grid = sitk.Image([70, 50, 28], sitk.sitkFloat32)
    grid.SetSpacing((3.0, 5.0, 6.0))
    grid.SetDirection(rotation.ravel().tolist())
    grid.SetOrigin((-rotation @ (np.array([3.0, 5.0, 6.0]) * (np.array([70, 50, 28]) - 1) / 2)).tolist())
    oblique = sitk.Resample(moving, grid, sitk.Transform(), sitk.sitkLinear, 0.0)
    result = run(pair_3d[0], oblique, CLICKS_3D_RAS)
    points = foreground_points(pair_3d[0])
    truth = points + [6.0, -4.0, 8.0]
    error = np.linalg.norm(fit_probe(result, points) - truth, axis=1).mean()
    reference_error = np.linalg.norm(fit_probe(reference_3d, points) - truth, axis=1).mean()
    print(f"oblique storage: mean error {error:.2f} mm (plain storage {reference_error:.2f} mm)")
    assert any(p.accepted for p in result.pairs)
    assert error < 0.5 * np.linalg.norm([6.0, -4.0, 8.0]), (error, reference_error)


def test_a_physically_rotated_pair_gives_a_rotation_not_a_flip():
    fixed = phantom()
    rotation = sitk.Euler3DTransform((0, 0, 0), 0.0, 0.0, np.deg2rad(8.0))
    moving = sitk.Resample(fixed, fixed, rotation, sitk.sitkLinear, 0.0)  # moving(p) = fixed(R p)
    result = run(fixed, moving, CLICKS_3D_RAS)
    matrix = result.transform.affine_matrix
    assert np.linalg.det(matrix) > 0
    expected = np.linalg.inv(np.array(rotation.GetMatrix()).reshape(3, 3))  # fixed → moving maps p to R⁻¹ p
    assert np.abs(matrix - expected).max() < 0.1, matrix


def planar(image: sitk.Image) -> sitk.Image:
    """The phantom's middle axial slice as a 2D image."""
    return image[:, :, image.GetSize()[2] // 2]


def test_2d_pair_restored_with_flipped_axes_gives_the_same_transform(pair_3d):
    fixed, moving = planar(pair_3d[0]), planar(pair_3d[1])
    clicks = [c[:2] for c in CLICKS_3D_RAS[:2]]
    reference = run(fixed, moving, clicks)
    flipped = sitk.Flip(moving, [True, True])   # the same physical image stored with both axes reversed
    assert np.array(flipped.GetDirection()).tolist() == [-1.0, 0.0, 0.0, -1.0]
    result = run(fixed, flipped, clicks)
    points = foreground_points(fixed)
    difference = np.linalg.norm(fit_probe(result, points) - fit_probe(reference, points), axis=1)
    assert difference.mean() < 1.0, difference.mean()


def test_single_slice_volume_keeps_its_in_plane_direction(pair_3d, tmp_path):
    """Slicer exports a 2D image as a one-slice volume; a mirrored one must read and register like the 2D image."""
    fixed, moving = planar(pair_3d[0]), planar(pair_3d[1])
    mirrored = sitk.Flip(moving, [True, False])
    volume = sitk.JoinSeries(mirrored)
    direction = np.eye(3)
    direction[:2, :2] = np.array(mirrored.GetDirection()).reshape(2, 2)
    volume.SetDirection(direction.ravel().tolist())
    volume.SetOrigin((*mirrored.GetOrigin(), 12.0))
    sitk.WriteImage(volume, str(tmp_path / "moving.nrrd"))
    read = read_image(tmp_path / "moving.nrrd")
    assert read.dimension == 2
    np.testing.assert_allclose(read.direction, [[-1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(read.index_to_lps(np.array([[3.0, 4.0]])),
                               [mirrored.TransformContinuousIndexToPhysicalPoint((3.0, 4.0))])
    clicks = [c[:2] for c in CLICKS_3D_RAS[:2]]
    reference = run(fixed, moving, clicks)
    result = register(Image(fixed), read, clicks, RegistrationOptions(fit=FAST_FIT),
                      model=load_model("test-patches", cache=EmbeddingCache(False)))
    points = foreground_points(fixed)
    difference = np.linalg.norm(fit_probe(result, points) - fit_probe(reference, points), axis=1)
    assert difference.mean() < 1.0, difference.mean()


def test_a_coronal_single_slice_is_refused_with_a_clear_message(tmp_path):
    volume = sitk.Image(20, 1, 16, sitk.sitkFloat32)
    volume.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))  # the thin axis runs along P: a coronal slice
    volume = volume + sitk.GetImageFromArray(np.random.default_rng(0).random((16, 1, 20)).astype(np.float32))
    sitk.WriteImage(volume, str(tmp_path / "coronal.nrrd"))
    with pytest.raises(InputImageError, match="coronal"):
        read_image(tmp_path / "coronal.nrrd")


def test_cube_views_are_storage_independent_too(pair_3d):
    fixed, moving = pair_3d
    reference = run(fixed, moving, CLICKS_3D_RAS[:2], model="test-patches-3d", pairs_only=True)
    result = run(fixed, sitk.DICOMOrient(moving, "RAS"), CLICKS_3D_RAS[:2], model="test-patches-3d",
                 pairs_only=True)
    for pair, reference_pair in zip(result.pairs, reference.pairs):
        assert pair.accepted == reference_pair.accepted
        np.testing.assert_allclose(physical_box(result, pair), physical_box(reference, reference_pair), atol=6.5)
