"""Presets fill only the options the caller left at their defaults; what each one sets, per dimension."""
import pytest

from PromptRegLib.errors import PromptError
from PromptRegLib.pipeline.presets import apply_preset
from PromptRegLib.prompting.pairs import PairOptions
from PromptRegLib.transform.fit import FitOptions


def test_quick_is_an_affine_from_the_clicks_alone():
    pairs, fit = apply_preset("quick", 3, PairOptions(), FitOptions())
    assert (pairs.auto_pairs, pairs.warps, fit.transform, fit.feature_weight) == (0, 0, "affine", 0.0)


@pytest.mark.parametrize("dimension, spacing, discrete, auto_pairs", [(2, (60.0, 30.0, 15.0), 0.0, 12),
                                                                       (3, (60.0, 30.0, 15.0), 40.0, None)])
def test_accurate_is_denser_in_2d_and_searches_large_displacements_in_3d(dimension, spacing, discrete, auto_pairs):
    pairs, fit = apply_preset("accurate", dimension, PairOptions(), FitOptions())
    assert (fit.control_spacing_mm, fit.discrete_radius_mm, pairs.auto_pairs) == (spacing, discrete, auto_pairs)


def test_an_option_the_caller_set_wins_and_default_changes_nothing():
    _, fit = apply_preset("accurate", 3, PairOptions(), FitOptions(discrete_radius_mm=20.0))
    assert fit.discrete_radius_mm == 20.0
    assert apply_preset("default", 3, PairOptions(), FitOptions()) == (PairOptions(), FitOptions())
    with pytest.raises(PromptError, match="unknown preset"):
        apply_preset("fast", 3, PairOptions(), FitOptions())
