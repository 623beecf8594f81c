"""The dense stage's ablation: each case's ROI pairs found once, then fitted with each term added in turn, scored like
the bench.

Finds each case's pairs once (``pairs_only``, the case's clicks and options), then refits with every variant —
starting from the fit options that run resolved (the preset, lengths scaled where an image has no physical units)
and changing only the ablated fields — and prints Dice or TRE, the field's folding over the fixed foreground and the
fit's seconds, so a default is chosen across cases, not on one.

    python Testing/Analysis/dense_refinement_sweep.py --data ../shared/data --cases ctchest4_3d,ctchest4_2d
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

from PromptRegLib.apps.bench.cases import load_cases
from PromptRegLib.apps.bench.scoring import score
from PromptRegLib.core.lengths import length_scale
from PromptRegLib.pipeline.options import RegistrationOptions
from PromptRegLib.pipeline.registration import refit_transform, register
from PromptRegLib.transform.features import feature_pair
from PromptRegLib.transform.fit import FitOptions

#: variant → the FitOptions fields it changes; lengths in mm on images with physical units (scaled like the
#: library's own defaults on photographs and slides)
VARIANTS = {
    "ROI pairs only": {"feature_weight": 0.0, "descriptor_weight": 0.0},
    "+ features": {"descriptor_weight": 0.0},
    "+ MIND (default)": {},
    "+ discrete 40 mm": {"discrete_radius_mm": 40.0},
    "+ discrete + 15 mm level": {"discrete_radius_mm": 40.0, "control_spacing_mm": (60.0, 30.0, 15.0)},
    "default with Adam on all points": {"coarse_voxels": 0, "finest_lbfgs_iterations": 0},
}
LENGTHS = ("discrete_radius_mm", "control_spacing_mm")


def variant_options(base: FitOptions, changes: dict, factor: float) -> FitOptions:
    """``base`` with ``changes``, their lengths multiplied by ``factor`` (1 on images in mm)."""
    scaled = {key: (tuple(v * factor for v in value) if isinstance(value, tuple) else value * factor)
              if key in LENGTHS else value for key, value in changes.items()}
    return replace(base, **scaled)


def sweep_case(case, variants: list[str]) -> list[dict]:
    """One case's rows: its pairs found once, then one fit per variant."""
    started = time.perf_counter()
    result = register(case.path(case.fixed), case.path(case.moving), case.prompts_ras,
                      RegistrationOptions.from_mapping({**case.options, "pairs_only": True}))
    pairs_seconds = time.perf_counter() - started
    started = time.perf_counter()  # read once for every variant: a variant's seconds are its fit's alone
    result.features = feature_pair(result.fixed_view, result.moving_view, descriptors=True)
    features_seconds = time.perf_counter() - started
    base = FitOptions(**result.report["fit_options"])
    factor = length_scale(result.fixed_image)
    rows = []
    for name in variants:
        started = time.perf_counter()
        refit_transform(result, variant_options(base, VARIANTS[name], factor))
        seconds = time.perf_counter() - started
        jacobian = result.report["jacobian"]
        row = {"case": case.name, "variant": name, **score(case, result.transform.to_sitk()),
               "fit_s": round(seconds, 1), "pairs_s": round(pairs_seconds, 1),
               "features_s": round(features_seconds, 1), "used": len(result.accepted_pairs),
               "folding": jacobian.get("folding_foreground"), "sdlogj": jacobian.get("sdlogj")}
        rows.append(row)
        tre = f"{row['tre_mm']:.2f} mm" if row.get("tre_mm") is not None else \
            f"{row['tre_px']:.1f} px" if row.get("tre_px") is not None else ""
        print(f"{case.name:22s} {name:30s} Dice {row.get('dice_mean') or float('nan'):.3f} {tre:9s} "
              f"folding {row['folding'] or 0:.5f} fit {seconds:5.1f} s (pairs {pairs_seconds:.0f} s, features "
              f"{features_seconds:.0f} s, "
              f"{row['used']} used)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--cases", default="ctchest4_3d,abdomen_mr_synth,abdomen_ct_mr,ctchest4_2d,"
                                           "histology_rat_kidney,histology_lung_lesion,aerial_synth")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + "; ".join(VARIANTS))
    parser.add_argument("--json", help="also write the rows here")
    arguments = parser.parse_args()
    wanted, variants = arguments.cases.split(","), arguments.variants.split(",")
    rows = []
    for case in load_cases(arguments.data):
        if case.name in wanted:
            rows += sweep_case(case, variants)
            if arguments.json:  # after every case: a long sweep stopped midway keeps what it measured
                with open(arguments.json, "w") as file:
                    json.dump(rows, file, indent=1, default=float)


if __name__ == "__main__":
    main()
