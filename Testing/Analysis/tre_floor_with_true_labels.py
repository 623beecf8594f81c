"""What TRE can a Dice-driven fit reach on ctchest4's 3D pair, given *perfect* ROI pairs?

Runs PromptReg's three user pairs (left lung, right lung, body), then replaces the ROI masks by the true
labels of the fixed and moving images — the best any segmenter could give — optionally adds more true
structures as pairs, refits, and prints TRE (mm, over labelled voxels) against the known transform. Run:
    .venv/bin/python Testing/Analysis/tre_floor_with_true_labels.py --data ../shared/data
"""
import argparse
import copy
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PromptRegLib.apps.bench.cases import load_cases
from PromptRegLib.apps.bench.scoring import score
from PromptRegLib.core.grid import resample_onto
from PromptRegLib.pipeline.registration import refit_transform, register
from PromptRegLib.transform.metrics import labelled_points, transform_points

LABEL_SETS = {"ours (LiteMedSAM ROIs)": None, "true lungs + body": (), "+ thoracic spine": (3,),
              "+ ribs, thoracic spine": (1, 3), "+ ribs and all vertebrae": (1, 2, 3, 4)}


def on_view(view, image, mask):
    """A label mask on the image's grid, seen on the view's working grid (nearest neighbour)."""
    values = resample_onto(image.with_array(mask.astype(np.float32)).sitk_image, view.grid, 0.0,
                           sitk.sitkNearestNeighbor, antialias=False)
    return values.reshape(view.shape) > 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    case = {c.name: c for c in load_cases(parser.parse_args().data)}["ctchest4_3d"]
    result = register(case.path(case.fixed), case.path(case.moving), case.prompts_ras, pairs_only=True)
    fixed_labels = sitk.ReadImage(case.path(case.fixed_labels))
    fixed_array = sitk.GetArrayFromImage(fixed_labels)
    moving_array = sitk.GetArrayFromImage(sitk.ReadImage(case.path(case.moving_labels)))
    truth = sitk.ReadTransform(case.path(case.truth_transform))
    points = labelled_points(fixed_labels, max_points=5000)
    user_pairs = result.pairs
    selections = [lambda labels: labels == 6, lambda labels: labels == 5, lambda labels: labels > 0]

    def true_pair(template, select, name):
        pair = copy.deepcopy(template)
        pair.name = name
        pair.roi_x.mask = on_view(result.fixed_view, result.fixed_image, select(fixed_array))
        pair.roi_y.mask = on_view(result.moving_view, result.moving_image, select(moving_array))
        return pair

    for name, extra_labels in LABEL_SETS.items():
        if extra_labels is None:
            result.pairs = user_pairs
        else:
            result.pairs = [true_pair(p, s, p.name) for p, s in zip(user_pairs, selections)]
            result.pairs += [true_pair(user_pairs[0], lambda labels, v=v: labels == v, f"label {v}")
                             for v in extra_labels]
        refit_transform(result)
        transform = result.transform.to_sitk()
        error = transform_points(transform, points) - transform_points(truth, points)
        print(f"{name:28s} TRE {np.linalg.norm(error, axis=1).mean():.2f} mm   mean |error| x y z "
              f"{np.round(np.abs(error).mean(axis=0), 2)}   Dice {score(case, transform)['dice_mean']:.3f}")


if __name__ == "__main__":
    main()
