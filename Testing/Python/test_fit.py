"""ROI pairs → transform on synthetic shapes with a known motion; transform files round-trip."""
import numpy as np
import SimpleITK as sitk

from PromptRegLib.fit import FitOptions, closed_form_affine, fit_transform, jacobian_determinant
from PromptRegLib.imageio import Image
from PromptRegLib.metrics import folding_fraction


def grid_image(shape=(40, 48, 44), spacing=(2.0, 2.0, 3.0)) -> Image:
    image = sitk.Image(list(shape[::-1]), sitk.sitkFloat32)
    image.SetSpacing(spacing[::-1])
    image.SetOrigin((-40.0, -50.0, 10.0))
    return Image(image)


def ellipsoid(image: Image, centre_lps, radii_mm) -> np.ndarray:
    from PromptRegLib.fit import grid_points_lps
    points = grid_points_lps(image)
    inside = (((points - np.array(centre_lps)) / np.array(radii_mm)) ** 2).sum(1) <= 1
    return inside.reshape(image.array.shape)


def test_closed_form_affine_recovers_an_exact_affine():
    rng = np.random.default_rng(0)
    fixed = rng.normal(size=(12, 3)) * 30
    matrix = np.array([[1.05, 0.05, 0], [-0.04, 0.98, 0.02], [0, 0.03, 1.02]])
    moving = fixed @ matrix.T + np.array([3.0, -2.0, 5.0])
    estimated, offset = closed_form_affine(fixed, moving, np.ones(12), ridge=0.0)
    np.testing.assert_allclose(estimated, matrix, atol=1e-9)
    np.testing.assert_allclose(offset, [3.0, -2.0, 5.0], atol=1e-9)


def test_shifted_shapes_are_brought_back_and_field_round_trips(tmp_path):
    fixed = grid_image()
    shift = np.array([4.0, -3.0, 2.0])  # moving = fixed + shift
    centres = [(-5, 0, 60), (15, 10, 70), (0, -20, 55)]
    radii = [(12, 9, 15), (6, 8, 9), (8, 5, 10)]
    fixed_masks = [ellipsoid(fixed, c, r) for c, r in zip(centres, radii)]
    moving_masks = [ellipsoid(fixed, np.array(c) + shift, r) for c, r in zip(centres, radii)]
    fitted = fit_transform(fixed, fixed, fixed_masks, moving_masks, options=FitOptions(control_spacing_mm=(40.0,)))
    probe = np.array([[-5.0, 0.0, 60.0], [10.0, 5.0, 66.0]])
    transform = fitted.to_sitk()
    moved = np.array([transform.TransformPoint(p.tolist()) for p in probe])
    np.testing.assert_allclose(moved - probe, [shift, shift], atol=1.0)
    assert fitted.report["dice_deformable"][0] > fitted.report["dice_identity"][0]
    assert folding_fraction(jacobian_determinant(fitted)) == 0.0
    path = tmp_path / "transform.h5"
    sitk.WriteTransform(transform, str(path))
    read_back = sitk.ReadTransform(str(path))
    again = np.array([read_back.TransformPoint(p.tolist()) for p in probe])
    np.testing.assert_allclose(again, moved, atol=1e-6)


def test_jacobian_of_identity_and_of_a_fold():
    fixed = grid_image((10, 12, 14))
    ball = ellipsoid(fixed, fixed.physical_center(), (8, 8, 8))
    fitted = fit_transform(fixed, fixed, [ball], [ball], options=FitOptions(transform="affine"))
    np.testing.assert_allclose(jacobian_determinant(fitted), 1.0, atol=0.02)
    fitted.affine_matrix = np.diag([-1.0, 1.0, 1.0])  # a mirror folds everything
    assert folding_fraction(jacobian_determinant(fitted)) == 1.0


def test_mirrored_pairs_do_not_make_a_mirrored_affine():
    """Inconsistent pairs whose least-squares affine is a reflection fall back to a shift."""
    fixed = grid_image()
    centre = fixed.physical_center()
    left = ellipsoid(fixed, centre + np.array([-15.0, 0, 0]), (6, 6, 6))
    right = ellipsoid(fixed, centre + np.array([15.0, 0, 0]), (6, 6, 6))
    middle = ellipsoid(fixed, centre + np.array([0, 12.0, 0]), (6, 6, 6))
    fitted = fit_transform(fixed, fixed, [left, right, middle], [right, left, middle],
                           options=FitOptions(transform="affine"))
    assert np.linalg.det(fitted.affine_matrix) > 0
