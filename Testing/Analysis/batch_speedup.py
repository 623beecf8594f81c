"""N pairs sharing one fixed image (an atlas) in ``promptreg batch`` vs N × one pair.

Builds a cohort of N follow-ups of the shared chest CT: the shared deformed copy (``pair3d_moving.nrrd``) and
N − 1 copies under seeded random rigid motions (±4°, ±8 mm) with noise, each with its truth transform and moved
labels. Then times, each from an empty embedding cache (so encoding counts):
  single — one ``promptreg register`` (the first pair), a fresh process;
  loop   — N ``promptreg register`` one after another (a shell loop; the atlas is in the disk cache after the first);
  batch  — ``promptreg batch`` on a local cluster (default: 2 workers × 1 thread here);
  batch-1x2 — ``promptreg batch --workers 1 --threads-per-worker 2``.
Run (about 25 min on 2 cores):
    .venv/bin/python Testing/Analysis/batch_speedup.py --data ../shared/data [--pairs 4] [--variants single,batch]
"""
import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

CLICKS = "-71.2,-33.6,-140.2;75.0,-33.6,-140.2;1.9,-3.1,-290.2"  # the bench's ctchest4_3d clicks (RAS)


def moved_copy(ct: sitk.Image, labels: sitk.Image, seed: int, folder: Path, name: str) -> dict:
    """CT and labels under a random rigid motion plus noise; returns the row's files (truth: fixed → moving)."""
    rng = np.random.default_rng(seed)
    centre = ct.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in ct.GetSize()])
    motion = sitk.Euler3DTransform(centre, *np.deg2rad(rng.uniform(-4, 4, 3)), tuple(rng.uniform(-8, 8, 3)))
    image = sitk.Resample(ct, ct, motion, sitk.sitkLinear, -1024.0)
    noise = sitk.GetImageFromArray(rng.normal(0, 20, sitk.GetArrayViewFromImage(image).shape).astype(np.float32))
    noise.CopyInformation(image)
    image = sitk.Cast(image, sitk.sitkFloat32) + noise
    sitk.WriteImage(image, str(folder / f"{name}.nrrd"))
    sitk.WriteImage(sitk.Resample(labels, ct, motion, sitk.sitkNearestNeighbor, 0), str(folder / f"{name}_labels.nii.gz"))
    sitk.WriteTransform(motion.GetInverse(), str(folder / f"{name}_truth.tfm"))  # image(y) = ct(motion(y))
    return {"moving": f"{name}.nrrd", "moving_labels": f"{name}_labels.nii.gz", "truth": f"{name}_truth.tfm"}


def build_cohort(data: Path, folder: Path, count: int) -> Path:
    ct_dir = data / "ctchest4"
    folder.mkdir(parents=True, exist_ok=True)
    ct, labels = sitk.ReadImage(str(ct_dir / "ct.nrrd")), sitk.ReadImage(str(ct_dir / "ct_labels.nii.gz"))
    rows = [{"id": "follow_up_0", "moving": str(ct_dir / "pair3d_moving.nrrd"),
             "moving_labels": str(ct_dir / "pair3d_moving_labels.nii.gz"), "truth": str(ct_dir / "pair3d_truth.h5")}]
    rows += [{"id": f"follow_up_{k}", **moved_copy(ct, labels, 100 + k, folder, f"follow_up_{k}")}
             for k in range(1, count)]
    path = folder / "pairs.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["id", "fixed", "moving", "prompts", "fixed_labels", "moving_labels", "truth"])
        writer.writeheader()
        for row in rows:
            writer.writerow({"fixed": str(ct_dir / "ct.nrrd"), "prompts": CLICKS,
                             "fixed_labels": str(ct_dir / "ct_labels.nii.gz"), **row})
    return path


def timed(command: list[str], cache: Path) -> float:
    shutil.rmtree(cache, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run(command, check=False, env={**os.environ, "PROMPTREG_CACHE": str(cache)},
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def register_command(row: dict, base: Path, output: Path) -> list[str]:
    command = [sys.executable, "-m", "PromptRegLib.apps.cli", "register", str(base / row["fixed"]),
               str(base / row["moving"]), "-o", str(output), "--quiet"]
    for click in row["prompts"].split(";"):
        command += [f"--prompt={click}"]
    return command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work", type=Path, default=Path("out/batch-speedup"))
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--variants", default="single,loop,batch,batch-1x2")
    args = parser.parse_args()
    pairs = build_cohort(args.data.resolve(), args.work.resolve() / "cohort", args.pairs)
    with open(pairs) as handle:
        rows = list(csv.DictReader(handle))
    base, cache = pairs.parent, Path(tempfile.mkdtemp(prefix="promptreg-speedup-cache-"))
    results = {}
    for variant in args.variants.split(","):
        output = args.work.resolve() / variant
        shutil.rmtree(output, ignore_errors=True)
        if variant == "single":
            results[variant] = timed(register_command(rows[0], base, output / rows[0]["id"]), cache)
        elif variant == "loop":
            shutil.rmtree(cache, ignore_errors=True)
            started = time.perf_counter()
            for row in rows:
                subprocess.run(register_command(row, base, output / row["id"]), check=False, stdout=subprocess.DEVNULL,
                               env={**os.environ, "PROMPTREG_CACHE": str(cache)})
            results[variant] = time.perf_counter() - started
        else:
            extra = ["--workers", "1", "--threads-per-worker", "2"] if variant == "batch-1x2" else []
            results[variant] = timed([sys.executable, "-m", "PromptRegLib.apps.cli", "batch", str(pairs), "-o", str(output),
                                      "--quiet", *extra], cache)
            records = json.loads((output / "summary.json").read_text())["pairs"]
            for record in records:
                print(f"  {variant} {record['id']}: {record['status']} {record.get('seconds')} s, "
                      f"Dice {record.get('dice_mean')}, TRE {record.get('tre_mm')} mm "
                      f"(before {record.get('tre_mm_before')}), encoded fixed/moving "
                      f"{record.get('encoded_fixed')}/{record.get('encoded_moving')}, cache hits {record.get('cache_hits')}")
        print(f"{variant}: {results[variant]:.1f} s", flush=True)
    shutil.rmtree(cache, ignore_errors=True)
    if "single" in results:
        print(f"\nN = {args.pairs}; N × single = {args.pairs * results['single']:.1f} s")
        for variant, seconds in results.items():
            if variant != "single":
                print(f"| {variant} | {seconds:.1f} s | speed-up vs N × single: "
                      f"{args.pairs * results['single'] / seconds:.2f}× |")


if __name__ == "__main__":
    main()
