"""How well can LiteMedSAM segment ctchest4's body from boxes at all?

Prompts every axial slice with the *true* body box (grown by a margin) — boxes no click can beat — and
scores the body and the tissue (body minus our lung ROIs, label 7) against the shipped labels. Run:
    .venv/bin/python Testing/Analysis/body_box_ceiling.py --data ../shared/data
"""
import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PromptRegLib.core.grid import resample_onto
from PromptRegLib.core.image import ras_to_lps, read_image
from PromptRegLib.core.regions import dice, expand_box, mask_box
from PromptRegLib.models import load_model
from PromptRegLib.prompting.pairs import segment_prompts
from PromptRegLib.views import make_view

LUNG_CLICKS_RAS = [(-71.2, -33.6, -140.2), (75.0, -33.6, -140.2)]
MARGINS = (0.0, 0.02, 0.05, 0.1, 0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    case = parser.parse_args().data / "ctchest4"
    view = make_view(load_model("litemedsam", device="cpu"), read_image(case / "ct.nrrd"))
    labels = resample_onto(sitk.ReadImage(str(case / "ct_labels.nii.gz")), view.grid, 0.0,  # on the axial view
                           sitk.sitkNearestNeighbor, antialias=False).astype(int)
    lungs = np.zeros(labels.shape, dtype=bool)
    for roi in segment_prompts(view, [ras_to_lps(np.array(p)) for p in LUNG_CLICKS_RAS]):
        lungs |= roi.mask
    per_margin = {margin: np.zeros(labels.shape, dtype=bool) for margin in MARGINS}
    for k in range(labels.shape[0]):
        body = labels[k] > 0
        boxes = np.array([expand_box(mask_box(body), body.shape, margin, 0.0) for margin in MARGINS])
        masks, _ = view.decode_boxes([k] * len(MARGINS), boxes)
        for margin, mask in zip(MARGINS, masks):
            per_margin[margin][k] = mask
    oracle = np.array([max((per_margin[m][k] for m in MARGINS), key=lambda mask: dice(mask, labels[k] > 0))
                       for k in range(labels.shape[0])])
    rows = [(f"true box + {margin:.0%}", mask) for margin, mask in per_margin.items()]
    rows.append(("best margin per slice (oracle)", oracle))
    for name, body in rows:
        print(f"{name:32s} body Dice {dice(body, labels > 0):.3f}   tissue (label 7) Dice "
              f"{dice(body & ~lungs, labels == 7):.3f}")


if __name__ == "__main__":
    main()
