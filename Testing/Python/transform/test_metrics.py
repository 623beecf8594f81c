"""Measures of a transform: folding and SDlogJ over a region, Dice per label, TRE."""
import numpy as np
import SimpleITK as sitk

from PromptRegLib.transform.metrics import dice_per_label, folding_fraction, sdlogj, target_registration_error


def test_folding_and_sdlogj_are_taken_over_the_region_asked():
    jacobian = np.ones((4, 4))
    jacobian[0, 0] = -0.5                                   # one folded voxel, outside the region
    jacobian[3, 3] = np.e                                   # one stretched voxel, inside it
    region = np.zeros((4, 4), bool)
    region[2:, 2:] = True
    assert folding_fraction(jacobian) == 1 / 16 and folding_fraction(jacobian, region) == 0.0
    assert np.isclose(sdlogj(jacobian, region), np.std([0, 0, 0, 1.0]))
    assert sdlogj(np.ones((3, 3))) == 0.0                   # an affine's: uniform


def test_dice_per_label_and_tre_of_a_known_shift():
    fixed = np.zeros((10, 10), int)
    fixed[2:6, 2:6] = 1
    assert dice_per_label(fixed, fixed) == {1: 1.0}
    truth = sitk.TranslationTransform(2, (3.0, 0.0))
    points = np.array([[0.0, 0.0], [5.0, 5.0]])
    assert np.allclose(target_registration_error(None, truth, points), 3.0)
    assert np.allclose(target_registration_error(truth, truth, points), 0.0)
