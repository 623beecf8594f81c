"""ROI pairs → transform on synthetic shapes with a known motion; transform files round-trip."""
import numpy as np
import SimpleITK as sitk

from PromptRegLib.core.affine import closed_form_affine
from PromptRegLib.core.image import Image
from PromptRegLib.transform.field import jacobian_determinant
from PromptRegLib.transform.fit import FitOptions, fit_transform
from PromptRegLib.transform.metrics import folding_fraction


def grid_image(shape=(40, 48, 44), spacing=(2.0, 2.0, 3.0)) -> Image:
    image = sitk.Image(list(shape[::-1]), sitk.sitkFloat32)
    image.SetSpacing(spacing[::-1])
    image.SetOrigin((-40.0, -50.0, 10.0))
    return Image(image)


def ellipsoid(image: Image, centre_lps, radii_mm) -> np.ndarray:
    from PromptRegLib.transform.field import grid_points_lps
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


def test_a_folding_field_is_stiffened_then_falls_back_to_affine(monkeypatch):
    """The policy every fit applies (registration and refit alike): bending ×10 while the field folds, at last the
    affine stage."""
    from PromptRegLib.transform import fit

    tried = []
    monkeypatch.setattr(fit, "fit_transform",
                        lambda *args, cancel=None, features=None, turn=None, start=None, progress=None:
                        tried.append(args[5]) or args[5])
    monkeypatch.setattr(fit, "jacobian_determinant", lambda transform: transform)
    monkeypatch.setattr(fit, "folding_fraction", lambda options: 0.2 if options.transform == "deformable" else 0.0)
    _, folding, used = fit.fit_without_folding(None, None, [], [], [], FitOptions(bending_weight=10.0))
    assert [(o.transform, o.bending_weight) for o in tried] == [("deformable", 10.0), ("deformable", 100.0),
                                                                 ("affine", 100.0)]
    assert used.transform == "affine" and folding == 0.0


def test_thin_slab_masks_fit_without_error():
    """A 3-slice slab: ITK's recursive Gaussian needs 4 voxels along an axis, so that axis stays sharp."""
    fixed = grid_image((3, 30, 30), (4.0, 2.0, 2.0))
    ball = ellipsoid(fixed, fixed.physical_center(), (10, 10, 6))
    fitted = fit_transform(fixed, fixed, [ball], [ball], options=FitOptions(transform="affine"))
    np.testing.assert_allclose(fitted.affine_matrix, np.eye(3))


def test_a_large_rotation_the_pairs_do_not_demand_is_refused():
    from PromptRegLib.core.affine import (
        plausible_affine,
        rotation_angle_deg,
        rotation_demanded,
    )

    angle = np.deg2rad(60.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    assert abs(rotation_angle_deg(rotation) - 60.0) < 1e-6
    assert plausible_affine(rotation) and not plausible_affine(rotation, max_rotation_deg=30.0)
    centroids = np.random.default_rng(0).normal(0, 40, (4, 3))
    assert rotation_demanded(centroids, centroids @ rotation.T, np.ones(4), rotation, np.zeros(3))
    assert not rotation_demanded(centroids, centroids + 2.0, np.ones(4), rotation, np.zeros(3))
    assert not rotation_demanded(centroids[:2], centroids[:2] @ rotation.T, np.ones(2), rotation, np.zeros(3))


def test_a_patient_turned_on_their_side_is_fitted_from_the_pairs_centres_or_the_found_turn():
    """Prompt-based initialisation: regions turned 90° about S. Four pairs' centres demand the turn; three
    cannot (three points always lie in one plane, and turning it over swaps mirror-image neighbours), but start from a
    turn found before prompting; the boxes are compared along the turned axes and the affine fit keeps the turn."""
    from PromptRegLib.transform.affine import initial_affine

    image = grid_image()
    centre = image.physical_center()
    turn = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90° about the third (S) axis
    regions = [((24.0, 0.0, -12.0), (18.0, 10.0, 12.0)), ((-22.0, 16.0, 6.0), (12.0, 20.0, 10.0)),
               ((0.0, -20.0, 14.0), (14.0, 14.0, 9.0)), ((-20.0, -18.0, -14.0), (8.0, 8.0, 8.0))]
    fixed_masks = [image.with_array(ellipsoid(image, centre + np.array(offset), radii).astype(np.float32))
                   for offset, radii in regions]
    moving_masks = [image.with_array(ellipsoid(image, centre + turn @ np.array(offset),
                                               np.array(radii)[[1, 0, 2]]).astype(np.float32))
                    for offset, radii in regions]
    matrix, offset, how = initial_affine(fixed_masks, moving_masks, np.ones(4))
    assert how == "affine (turned by the pairs' centres)" and np.abs(matrix - turn).max() < 0.05, (how, matrix)
    np.testing.assert_allclose(matrix @ centre + offset, centre, atol=1.5)
    assert initial_affine(fixed_masks[:3], moving_masks[:3], np.ones(3))[2].startswith("shift")
    matrix, _, how = initial_affine(fixed_masks[:3], moving_masks[:3], np.ones(3), turn=turn)
    assert how == "affine (turned as the features agree)" and np.abs(matrix - turn).max() < 0.05, (how, matrix)
    fitted = fit_transform(image, image, fixed_masks[:3], moving_masks[:3], options=FitOptions(transform="affine"),
                           turn=turn)
    assert np.abs(fitted.affine_matrix - turn).max() < 0.05, fitted.affine_matrix


def test_a_correction_starts_from_the_transform_it_corrects():
    """One pair changed: the affine starts at the corrected transform's and only the finest control level runs,
    from its field (a warm start, the correction's latency)."""
    fixed = grid_image()
    centre = fixed.physical_center()
    shift = np.array([4.0, -3.0, 2.0])
    blobs = [(np.array([20.0, 0.0, 0.0]), (14, 10, 10)), (np.array([-20.0, 8.0, 0.0]), (10, 14, 10))]
    fixed_masks = [ellipsoid(fixed, centre + c, r) for c, r in blobs]
    moving_masks = [ellipsoid(fixed, centre + c + shift, r) for c, r in blobs]
    options = FitOptions(working_voxels=20_000, max_iterations=100)
    first = fit_transform(fixed, fixed, fixed_masks, moving_masks, options=options)
    again = fit_transform(fixed, fixed, fixed_masks, moving_masks, options=options, start=first)
    assert again.report["initial_affine"].startswith("warm start")
    assert len(again.report["deformable_iterations"]) == 1 < len(first.report["deformable_iterations"])
    assert min(again.report["dice_deformable"]) >= min(first.report["dice_deformable"]) - 0.02
