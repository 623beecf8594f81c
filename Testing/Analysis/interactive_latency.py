"""What bounds a second click's latency (≤ 1 s once the images are encoded)?

Registers a bench case once (pairs only; the views keep every embedding in memory), then pairs the case's first
click again and counts what that costs: decoder calls, boxes decoded, seconds per box. Run:
    .venv/bin/python Testing/Analysis/interactive_latency.py --data ../shared/data [--case ctchest4_3d]
"""
import argparse
import time
from pathlib import Path

from PromptRegLib.apps.bench.cases import load_cases, prepare_case
from PromptRegLib.apps.bench.methods import second_click_seconds
from PromptRegLib.pipeline.registration import register


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--case", default="ctchest4_3d")
    parser.add_argument("--work", type=Path, default=Path("out/analysis-work"), help="resampled case files")
    args = parser.parse_args()
    case = prepare_case({c.name: c for c in load_cases(args.data)}[args.case], args.work)
    started = time.perf_counter()
    result = register(case.path(case.fixed), case.path(case.moving), case.prompts_ras, pairs_only=True)
    print(f"{case.name}: first run (encoding both images, {len(case.prompts_ras)} clicks) "
          f"{time.perf_counter() - started:.1f} s; {result.fixed_view.shape[0]} working slices per image")
    model, batches = result.fixed_view.model, []
    decode = model.decode

    def counting(embeddings, **prompts):
        batches.append(len(embeddings))
        return decode(embeddings, **prompts)

    model.decode = counting
    seconds = second_click_seconds(case, result)
    boxes = sum(batches)
    print(f"second click: {seconds:.1f} s, {len(batches)} decoder calls, {boxes} boxes, "
          f"{seconds / max(boxes, 1):.3f} s per box (everything else included)")


if __name__ == "__main__":
    main()
