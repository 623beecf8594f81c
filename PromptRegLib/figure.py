"""The figure a person looks at: ROI pairs on both images and the registered result."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _slice(array: np.ndarray, axis: int | None, index: int) -> np.ndarray:
    return array if axis is None else np.take(array, index, axis=axis)


def draw_pairs(path: Path, result, warped_moving: np.ndarray | None) -> None:
    """Fixed with ROI X, moving with ROI Y, warped moving with ROI X: on the first accepted pair's seed slice."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .outputs import segment_color

    fixed_stack, moving_stack = result.fixed_stack, result.moving_stack
    pairs = result.accepted_pairs or result.pairs
    k_fixed = pairs[0].roi_x.seed_slice if pairs else fixed_stack.shape[0] // 2
    k_moving = pairs[0].roi_y.seed_slice if pairs else moving_stack.shape[0] // 2
    panels = [("fixed + ROI X", fixed_stack.slices01[k_fixed], [(p, p.roi_x.mask[k_fixed]) for p in pairs]),
              ("moving + ROI Y", moving_stack.slices01[k_moving], [(p, p.roi_y.mask[k_moving]) for p in pairs])]
    if warped_moving is not None:
        low, high = fixed_stack.window
        warped = np.clip((fixed_stack.image_to_stack_array(warped_moving)[k_fixed] - low) / (high - low), 0, 1)
        panels.append(("registered moving + ROI X", warped, [(p, p.roi_x.mask[k_fixed]) for p in pairs]))
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
