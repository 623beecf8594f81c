"""The encoding policy's ablation: every working slice encoded (the default) against encoded slices at most
``--spacings`` mm apart with the features between them interpolated (``SliceOptions.encode_spacing_mm``).

Each run starts with the embedding cache off, so its seconds include all of its encoding; prints per case and
spacing the score (TRE or Dice, as the bench scores it), the seconds end to end, the slices encoded and the GFLOP
spent.

    PROMPTREG_CACHE=off python Testing/Analysis/encoding_policy.py --data ../shared/data
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace

from PromptRegLib.apps.bench.cases import load_cases, prepare_case
from PromptRegLib.apps.bench.scoring import score
from PromptRegLib.pipeline.options import RegistrationOptions
from PromptRegLib.pipeline.registration import register


def run_case(case, spacing_mm: float) -> dict:
    """One registration of ``case`` with encoded slices at most ``spacing_mm`` apart (0: every working slice)."""
    options = RegistrationOptions.from_mapping(case.options)
    options = replace(options, slices=replace(options.slices, encode_spacing_mm=spacing_mm))
    started = time.perf_counter()
    result = register(case.path(case.fixed), case.path(case.moving), case.prompts_ras, options)
    seconds = time.perf_counter() - started
    encoder = result.report.get("encoder") or {}
    return {"case": case.name, "encode_spacing_mm": spacing_mm, "seconds": round(seconds, 1),
            **score(case, result.transform.to_sitk()), "encoder": encoder}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--cases", default="ctchest4_3d,abdomen_mr_synth,abdomen_ct_mr")
    parser.add_argument("--spacings", default="0,10,20", help="mm, comma-separated (0: every working slice)")
    parser.add_argument("--work", default="out/encoding_policy", help="where derived cases are written")
    parser.add_argument("--json", help="also write the rows here")
    arguments = parser.parse_args()
    if os.environ.get("PROMPTREG_CACHE") != "off":
        print("note: PROMPTREG_CACHE is not 'off': cached embeddings make the seconds a lower bound")
    wanted = arguments.cases.split(",")
    rows = []
    for case in load_cases(arguments.data):
        if case.name not in wanted:
            continue
        case = prepare_case(case, arguments.work)
        for spacing in (float(s) for s in arguments.spacings.split(",")):
            row = run_case(case, spacing)
            rows.append(row)
            quality = f"{row['tre_mm']:.2f} mm" if row.get("tre_mm") is not None else f"Dice {row['dice_mean']:.3f}"
            print(f"{case.name:18s} {spacing:4.0f} mm  {quality:12s} {row['seconds']:6.1f} s  "
                  f"{row['encoder'].get('slices')} slices  {row['encoder'].get('gflop')} GFLOP", flush=True)
            if arguments.json:
                with open(arguments.json, "w") as file:
                    json.dump(rows, file, indent=1, default=float)


if __name__ == "__main__":
    main()
