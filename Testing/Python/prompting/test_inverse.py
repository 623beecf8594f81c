"""Inverse prompting's choice among candidates: agreement with where the prior maps ROI X weighs in."""
import numpy as np

from PromptRegLib.prompting.inverse import AffinePrior, InverseOptions, agreement_with_prior
from PromptRegLib.views.base import Seed


class FlatView:
    """Just enough of a view: voxel (k, r, c) ↔ LPS as 1 mm steps, unit scale."""

    unit_mm = 1.0

    def centroid_lps(self, mask):
        return np.argwhere(mask).mean(0)[::-1].astype(float)


def seed_at(centre_rc) -> Seed:
    mask = np.zeros((1, 200, 200), bool)
    r, c = centre_rc
    mask[0, r - 3:r + 4, c - 3:c + 4] = True
    return Seed(mask, 0.9, np.zeros(3), 0)


def test_a_candidate_where_the_prior_expects_it_outweighs_an_equally_similar_one_far_away():
    near, far = seed_at((50, 50)), seed_at((50, 170))
    expected = np.array([50.0, 50.0, 0.0])
    weights = agreement_with_prior(FlatView(), [near, far], expected, InverseOptions(search_radius_mm=60.0))
    assert weights[0] > 0.99 and weights[1] < 0.2
    assert agreement_with_prior(FlatView(), [Seed(np.zeros((1, 4, 4), bool), 0.0, np.zeros(3), 0)], expected,
                                InverseOptions())[0] == 0.0  # an empty candidate never wins


def test_the_prior_maps_and_inverts():
    prior = AffinePrior(np.diag([2.0, 1.0]), np.array([1.0, 0.0]))
    point = np.array([[3.0, 4.0]])
    assert np.allclose(prior.inverse().forward(prior.forward(point)), point)
