"""The figure a person looks at: ROI pairs on both images and the registered result."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.grid import resample_onto

#: segment colours (RGB 0–1), shared by the two ROIs of a pair
PALETTE = [(0.90, 0.30, 0.24), (0.18, 0.55, 0.85), (0.30, 0.75, 0.35), (0.95, 0.75, 0.15), (0.60, 0.35, 0.75),
           (0.10, 0.75, 0.75), (0.95, 0.50, 0.65), (0.55, 0.40, 0.25), (0.65, 0.80, 0.20), (0.35, 0.35, 0.90)]


def segment_color(index: int) -> tuple[float, float, float]:
    return PALETTE[index % len(PALETTE)]



def draw_pairs(path: Path, result, warped_moving=None) -> None:
    """Fixed with ROI X, moving with ROI Y, warped moving with ROI X: on the first accepted pair's seed slice of
    each view (the slices the model saw, in their canonical orientation). ``warped_moving``: a SimpleITK image on
    the fixed grid."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fixed_view, moving_view = result.fixed_view, result.moving_view
    pairs = result.accepted_pairs or result.pairs
    k_fixed = pairs[0].roi_x.seed_slice if pairs else fixed_view.shape[0] // 2
    k_moving = pairs[0].roi_y.seed_slice if pairs else moving_view.shape[0] // 2
    panels = [("fixed + ROI X", fixed_view.intensities01[k_fixed], [(p, p.roi_x.mask[k_fixed]) for p in pairs]),
              ("moving + ROI Y", moving_view.intensities01[k_moving], [(p, p.roi_y.mask[k_moving]) for p in pairs])]
    if warped_moving is not None:
        low, high = fixed_view.window
        channels = [warped_moving] if warped_moving.GetNumberOfComponentsPerPixel() == 1 else \
            [sitk.VectorIndexSelectionCast(warped_moving, c) for c in range(3)]           # colour: shown in colour
        pictures = [np.clip((resample_onto(c, fixed_view.grid, low, antialias=False) - low) / (high - low), 0, 1)
                    .reshape(fixed_view.shape)[k_fixed] for c in channels]
        picture = pictures[0] if len(pictures) == 1 else np.stack(pictures, axis=-1)
        panels.append(("registered moving + ROI X", picture, [(p, p.roi_x.mask[k_fixed]) for p in pairs]))
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5))
    for axis, (title, picture, contours) in zip(np.atleast_1d(axes), panels):
        axis.imshow(picture, cmap="gray", vmin=0, vmax=1)
        for pair, mask in contours:
            if mask.any():
                axis.contour(mask, levels=[0.5], colors=[segment_color(result.pairs.index(pair))], linewidths=1.2)
        axis.set_title(title)
        axis.axis("off")
    names = ", ".join(p.name for p in pairs[:8])
    figure.suptitle(f"PromptReg: {len(result.accepted_pairs)} of {len(result.pairs)} pairs used ({names})")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
