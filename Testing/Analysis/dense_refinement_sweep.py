"""Dense feature refinement: the same ROI pairs fitted with several feature weights, scored like the bench.

Finds each case's pairs once (``register(..., pairs_only=True)``), then fits with every variant and prints Dice,
TRE and fit time, so the default weight is chosen across cases, not on one.

    python Testing/Analysis/dense_refinement_sweep.py --data ../shared/data --cases ctchest4_3d,ctchest4_2d
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

from PromptRegLib.apps.bench.cases import load_cases
from PromptRegLib.apps.bench.scoring import score
from PromptRegLib.pipeline.registration import PairOptions, refit_transform, register
from PromptRegLib.transform.fit import FitOptions

VARIANTS = {
    "pairs only": FitOptions(feature_weight=0.0),
    "features 2 no MIND": FitOptions(feature_weight=2.0, descriptor_weight=0.0),
    "features 2 MIND 0.5": FitOptions(feature_weight=2.0, descriptor_weight=0.5),
    "features 2 MIND 1": FitOptions(feature_weight=2.0, descriptor_weight=1.0),
    "features 2 MIND 2": FitOptions(feature_weight=2.0, descriptor_weight=2.0),
    "features 1 MIND 2": FitOptions(feature_weight=1.0, descriptor_weight=2.0),
    "features 2 MIND 2 control 15 mm": FitOptions(feature_weight=2.0, descriptor_weight=2.0,
                                                  control_spacing_mm=(60.0, 30.0, 15.0)),
    "features 2 MIND 4 control 15 mm": FitOptions(feature_weight=2.0, descriptor_weight=4.0,
                                                  control_spacing_mm=(60.0, 30.0, 15.0)),
    "features 2 MIND 8 control 15 mm": FitOptions(feature_weight=2.0, descriptor_weight=8.0,
                                                  control_spacing_mm=(60.0, 30.0, 15.0)),
    "features 0.5": FitOptions(feature_weight=0.5),
    "features 1": FitOptions(feature_weight=1.0),
    "features 2": FitOptions(feature_weight=2.0),
    "features 4": FitOptions(feature_weight=4.0),
    "features 2 control 15 mm": FitOptions(feature_weight=2.0, control_spacing_mm=(60.0, 30.0, 15.0)),
    "features 1 deformable only": FitOptions(feature_weight=1.0, feature_affine=False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--cases", default="ctchest4_3d,ctchest4_2d,abdomen_mr_synth,abdomen_ct_mr")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    arguments = parser.parse_args()
    wanted = arguments.cases.split(",")
    rows = []
    for case in [c for c in load_cases(arguments.data) if c.name in wanted]:
        pair_options = PairOptions()
        if case.auto_pairs is not None:
            pair_options.auto_pairs = case.auto_pairs
        started = time.perf_counter()
        result = register(case.path(case.fixed), case.path(case.moving), case.prompts_ras,
                          pair_options=pair_options, pairs_only=True)
        pairs_seconds = time.perf_counter() - started
        for name in arguments.variants.split(","):
            started = time.perf_counter()
            refit_transform(result, replace(VARIANTS[name]))
            seconds = time.perf_counter() - started
            row = {"case": case.name, "variant": name, **score(case, result.transform.to_sitk()),
                   "fit_s": round(seconds, 1), "pairs_s": round(pairs_seconds, 1),
                   "cosine": {k: round(v, 3) for k, v in result.report["fit"].items() if k.startswith(("feature_cos", "descriptor_corr"))},
                   "used": len(result.accepted_pairs)}
            rows.append(row)
            tre = f"{row['tre_mm']:.2f} mm" if row.get("tre_mm") is not None else \
                f"{row['tre_px']:.1f} px" if row.get("tre_px") is not None else ""
            print(f"{case.name:18s} {name:30s} Dice {row.get('dice_mean', float('nan')):.3f} {tre:9s} "
                  f"fit {seconds:5.1f} s  {row['cosine']}", flush=True)
    print(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
