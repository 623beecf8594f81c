"""LiteMedSAM's image encoder on a CUDA GPU: seconds per 256² slice by batch size, fp32 and bf16 autocast.

Also times the whole ``encode`` (preprocessing on the CPU included, the default batch of 8 and a batch of 32)
and compares the GPU's features with the same machine's CPU torch path (max abs difference; GPU
convolutions may run in TF32). Inputs are random: the time does not depend on the content.

    python Testing/Analysis/encoder_gpu.py [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from PromptRegLib.models.cache import EmbeddingCache  # noqa: E402
from PromptRegLib.models.litemedsam import LiteMedSAM  # noqa: E402


def timed(run, repeats: int) -> float:
    """Median seconds of ``run()`` over ``repeats`` calls after two warm-up calls, synchronised."""
    for _ in range(2):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out")
    args = parser.parse_args()
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
               "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "batches": []}
    print(results, flush=True)
    model = LiteMedSAM(device="cuda", cache=EmbeddingCache(False))
    encoder = model.net.image_encoder
    for batch in (1, 8, 32, 64, 128):
        inputs = torch.rand(batch, 3, 256, 256, device="cuda")
        with torch.inference_mode():
            fp32 = timed(lambda: encoder(inputs), 10)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                bf16 = timed(lambda: encoder(inputs), 10)
        row = {"batch": batch, "fp32_s_per_slice": fp32 / batch, "bf16_s_per_slice": bf16 / batch,
               "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30}
        results["batches"].append(row)
        print(row, flush=True)

    slices = [np.random.default_rng(i).random((128, 128)).astype(np.float32) for i in range(64)]
    for batch_size in (8, 32):
        start = time.perf_counter()
        model.encode(slices, (3.05, 3.05), batch_size=batch_size)
        torch.cuda.synchronize()
        results[f"encode_64_slices_batch{batch_size}_s"] = time.perf_counter() - start
        model.cache = EmbeddingCache(False)
    print({k: v for k, v in results.items() if k.startswith("encode")}, flush=True)

    probe = torch.rand(4, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        on_gpu = encoder(probe.cuda()).float().cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            on_gpu_bf16 = encoder(probe.cuda()).float().cpu()
        model.net.cpu()
        on_cpu = encoder(probe)
    results["max_abs_diff_gpu_fp32_vs_cpu"] = float((on_gpu - on_cpu).abs().max())
    results["max_abs_diff_gpu_bf16_vs_cpu"] = float((on_gpu_bf16 - on_cpu).abs().max())
    results["feature_abs_max"] = float(on_cpu.abs().max())
    print(json.dumps(results, indent=1), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
