"""How much a click's ROI moves with storage, beside how much it moves with the click itself.

For each of a case's clicks, the seed mask (the box search on the click's slice) is compared between the image
at its own grid and the same image resampled ½ and ¼ finer (the storage-invariance test's copies), and, on each of
the three grids, between the click and the click moved 2 mm along each in-plane axis. Where the model's
answer at a click already changes under a 2 mm nudge, no storage can make the ROI reproducible; the
storage-invariance test's ROI criterion is bounded by that.

    python Testing/Analysis/click_ambiguity.py --data ../shared/data --case abdomen_mr_synth
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Python"))

from test_storage_invariance import resampled  # noqa: E402

from PromptRegLib.apps.bench.cases import load_cases  # noqa: E402
from PromptRegLib.core.image import Image, ras_to_lps  # noqa: E402
from PromptRegLib.core.regions import dice  # noqa: E402
from PromptRegLib.models import load_model  # noqa: E402
from PromptRegLib.views import make_views  # noqa: E402

NUDGES_MM = [(2.0, 0.0, 0.0), (-2.0, 0.0, 0.0), (0.0, 2.0, 0.0), (0.0, -2.0, 0.0)]


def seed_mask(view, point_lps: np.ndarray) -> np.ndarray:
    return view.seed_from_point(point_lps).mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--case", default="abdomen_mr_synth")
    arguments = parser.parse_args()
    case = {c.name: c for c in load_cases(arguments.data)}[arguments.case]
    fixed = sitk.ReadImage(case.path(case.fixed))
    model = load_model("litemedsam", device="cpu")
    views = {factor: make_views(model, Image(resampled(fixed, factor) if factor > 1 else fixed), None)[0]
             for factor in (1, 2, 4)}
    names = getattr(case, "prompt_names", None) or [f"click {i + 1}" for i in range(len(case.prompts_ras))]
    print("click | ROI Dice with the stored grid's, at ½ / ¼ spacing | lowest ROI Dice between the click and the "
          "click nudged 2 mm (L, R, P, A), on the stored grid / ½ / ¼")
    for name, click_ras in zip(names, case.prompts_ras):
        click = ras_to_lps(np.asarray(click_ras, dtype=float))
        at_click = {f: seed_mask(view, click) for f, view in views.items()}
        storage = [dice(at_click[1], at_click[f]) for f in (2, 4)]
        nudged = [min(dice(at_click[f], seed_mask(view, click + np.array(n))) for n in NUDGES_MM)
                  for f, view in views.items()]
        print(f"{name} | {' / '.join(f'{d:.2f}' for d in storage)} | {' / '.join(f'{d:.2f}' for d in nudged)}",
              flush=True)

if __name__ == "__main__":
    main()
