"""ConvexAdam as a bench peer: its voxel field turned into a fixed → moving transform in LPS mm, and a known shift
recovered on a small synthetic pair."""
import convexAdam  # noqa: F401 — the peer's package (PyPI convexadam); fail here, not skip, when it is missing
import numpy as np
import pytest
import SimpleITK as sitk

from PromptRegLib.apps.bench.cases import Case
from PromptRegLib.apps.bench.convexadam_peer import _convexadam, field_to_transform, padded_shape
from PromptRegLib.apps.bench.methods import METHODS, OPTIONAL
from PromptRegLib.errors import InputImageError


def _rotation(degrees_about_s: float, degrees_about_p: float = 0.0) -> np.ndarray:
    a, b = np.deg2rad(degrees_about_s), np.deg2rad(degrees_about_p)
    about_s = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    about_p = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    return about_s @ about_p


def _grid(size, spacing, direction, origin) -> sitk.Image:
    image = sitk.Image([int(n) for n in size], sitk.sitkFloat32)
    image.SetSpacing([float(v) for v in spacing])
    image.SetDirection([float(v) for v in np.asarray(direction).ravel()])
    image.SetOrigin([float(v) for v in origin])
    return image


def _physical_points(image: sitk.Image) -> np.ndarray:
    """(z, y, x, 3) LPS mm of every voxel centre, numpy order."""
    size = image.GetSize()
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).transpose(2, 1, 0, 3)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return np.array(image.GetOrigin()) + (index * np.array(image.GetSpacing())) @ direction.T


def test_registered_as_optional_peer():
    assert METHODS["convexadam"] is _convexadam and OPTIONAL["convexadam"] == "convexAdam"


def test_padded_shape():
    assert padded_shape((48, 50, 5), 6, 12) == (48, 54, 12)


def test_constant_field_becomes_physical_displacement_through_the_direction():
    """d voxels along X, Y, Z → D · diag(spacing) · d mm, on a grid that is anisotropic, oblique and not cubic."""
    direction = _rotation(30.0, 20.0)
    fixed = _grid((5, 6, 7), (0.5, 1.0, 2.0), direction, (-3.0, 4.0, 10.0))
    d = np.array([1.0, 2.0, -1.0])
    field = np.broadcast_to(d, (5, 6, 7, 3))
    expected_shift = direction @ (np.array([0.5, 1.0, 2.0]) * d)
    transform = field_to_transform(field, fixed)
    for index in [(0, 0, 0), (4, 5, 6), (2, 3, 1), (1, 4, 5)]:
        p = np.array(fixed.TransformIndexToPhysicalPoint(index))
        np.testing.assert_allclose(transform.TransformPoint(p.tolist()), p + expected_shift, atol=1e-9)


def test_field_positions_follow_xyz_index_order_and_compose_after_the_initial_transform():
    """A field varying along X only (d_x = 0.5 i) lands on the right voxels; the initial transform (a rotation about
    a centre, plus a translation) is applied after the field: T(p) = initial(p + u(p))."""
    direction = _rotation(-40.0)
    spacing = np.array([2.0, 1.0, 3.0])
    fixed = _grid((6, 5, 4), spacing, direction, (10.0, -20.0, 5.0))
    field = np.zeros((6, 5, 4, 3))
    field[..., 0] = 0.5 * np.arange(6)[:, None, None]
    initial = sitk.Euler3DTransform((12.0, -18.0, 9.0), 0.1, -0.2, 0.3, (1.0, 2.0, -3.0))
    transform = field_to_transform(field, fixed, initial)
    for index in [(0, 0, 0), (5, 4, 3), (3, 1, 2), (1, 2, 3)]:
        p = np.array(fixed.TransformIndexToPhysicalPoint(index))
        u = direction @ (spacing * np.array([0.5 * index[0], 0.0, 0.0]))
        np.testing.assert_allclose(transform.TransformPoint(p.tolist()),
                                   initial.TransformPoint((p + u).tolist()), atol=1e-9)
    with pytest.raises(ValueError, match="does not fit"):
        field_to_transform(field.transpose(2, 1, 0, 3), fixed)   # numpy z, y, x order is refused


def _blobs(points: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Spheres of different radii (soft edges), in mm about ``centre``: an unambiguous pattern to register."""
    image = np.zeros(points.shape[:-1])
    for offset, radius in [((-12.0, -8.0, 4.0), 13.0), ((16.0, 10.0, -6.0), 8.0), ((-4.0, 18.0, -14.0), 6.0),
                           ((8.0, -18.0, 14.0), 9.0)]:
        distance = np.linalg.norm(points - (centre + np.array(offset)), axis=-1)
        image += 1.0 / (1.0 + np.exp((distance - radius) / 1.0))
    return (100.0 * image).astype(np.float32)


def test_recovers_a_known_physical_shift(tmp_path):
    """The moving image is the fixed one shifted +6 mm along L, stored on a grid whose origin differs by another
    offset (which the geometric-centre alignment takes up); fixed points inside the blobs must map to p + shift."""
    shift = np.array([6.0, 0.0, 0.0])              # LPS: +x is L
    origin_offset = np.array([-4.0, 4.0, 2.0])    # moving grid vs fixed grid, same direction and spacing
    direction = _rotation(30.0)
    size, spacing = (42, 42, 42), (2.0, 2.0, 2.0)
    fixed = _grid(size, spacing, direction, (-40.0, 25.0, 10.0))
    moving = _grid(size, spacing, direction, np.array(fixed.GetOrigin()) + origin_offset)
    centre = np.array(fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in size]))

    fixed_points = _physical_points(fixed)
    fixed_array = _blobs(fixed_points, centre)
    moving_array = _blobs(_physical_points(moving) - shift, centre)   # moving(q) = fixed(q − shift)
    for image, array, name in [(fixed, fixed_array, "fixed.nrrd"), (moving, moving_array, "moving.nrrd")]:
        written = sitk.GetImageFromArray(array)
        written.CopyInformation(image)
        sitk.WriteImage(written, str(tmp_path / name))

    case = Case(name="shifted_blobs", data_dir=tmp_path, fixed="fixed.nrrd", moving="moving.nrrd", prompts_ras=[])
    transform, extra = _convexadam(case, True, lambda stage, fraction: None)
    assert extra == {}

    inside = fixed_points[fixed_array > 50.0]
    points = inside[np.random.default_rng(0).choice(len(inside), 300, replace=False)]
    mapped = np.array([transform.TransformPoint(p.tolist()) for p in points])
    errors = np.linalg.norm(mapped - (points + shift), axis=1)
    assert np.linalg.norm(np.mean(mapped - points, axis=0) - shift) < 1.0
    assert np.percentile(errors, 90) < 1.5, f"errors (mm): median {np.median(errors):.2f}, max {errors.max():.2f}"


def test_2d_case_is_refused(tmp_path):
    image = sitk.Image([32, 32], sitk.sitkFloat32)
    for name in ("fixed.nrrd", "moving.nrrd"):
        sitk.WriteImage(image, str(tmp_path / name))
    case = Case(name="flat", data_dir=tmp_path, fixed="fixed.nrrd", moving="moving.nrrd", prompts_ras=[])
    with pytest.raises(InputImageError, match="3D volumes only"):
        _convexadam(case, True, lambda stage, fraction: None)
