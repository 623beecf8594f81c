"""LiteMedSAM's box decoder on CPU: seconds per box prompt, torch by number of prompts decoded together, and
OpenVINO f32 (the default where it loads; one prompt per call).

Box prompts from the shared chest CT's labels on five encoded slices (``encoder_runtimes.load_slices_and_boxes``),
repeated to 64 prompts; each variant decodes all 64 through ``PromptableSegmenter.decode`` and its masks
(logits > 0) are compared with torch's one-at-a-time decoding. Rounds interleave the variants; medians printed.

    .venv/bin/python Testing/Analysis/decode_batch.py --rounds 3 --sizes 1,2,4,8,16,64
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encoder_runtimes import load_slices_and_boxes  # noqa: E402

from PromptRegLib.models.cache import EmbeddingCache  # noqa: E402
from PromptRegLib.models.litemedsam import LiteMedSAM  # noqa: E402


class FixedBatch(LiteMedSAM):
    """LiteMedSAM decoding ``size`` prompts at a time."""

    size = 1

    @property
    def decode_batch_size(self) -> int:
        return self.size


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="1,2,4,8,16,64")
    args = parser.parse_args()
    runtime = LiteMedSAM(cache=EmbeddingCache(None))
    os.environ["PROMPTREG_ENCODER_RUNTIME"] = "torch"
    model = FixedBatch(cache=EmbeddingCache(None))
    slices, boxes, spacing = load_slices_and_boxes(np.random.default_rng(0))
    embeddings = [model.encode([s], spacing)[0] for s in slices]
    pairs = [(e, b) for e, slice_boxes in zip(embeddings, boxes) for b in slice_boxes]
    pairs = (pairs * (64 // len(pairs) + 1))[:64]
    prompts, boxes_xy = [p[0] for p in pairs], np.array([p[1] for p in pairs])
    variants = {f"torch, batch {int(size):3d}": (model, int(size)) for size in args.sizes.split(",")}
    variants["openvino"] = (runtime, runtime.decode_batch_size)
    seconds = {name: [] for name in variants}
    masks = {}
    for _ in range(args.rounds):
        for name, (segmenter, size) in variants.items():
            model.size = size
            start = time.perf_counter()
            logits, _ = segmenter.decode(prompts, boxes_xy=boxes_xy)
            seconds[name].append((time.perf_counter() - start) / len(prompts))
            masks[name] = (logits > 0).numpy()
    reference_name = next(iter(variants))
    print(f"decoder runtime of the default model: {runtime.decoder_runtime}")
    for name in variants:
        differing = int((masks[name] != masks[reference_name]).sum())
        print(f"{name}: {statistics.median(seconds[name]):.3f} s a box, "
              f"{differing} mask pixels differ from {reference_name} (of {masks[name].size})")


if __name__ == "__main__":
    main()
