"""LiteMedSAM's image encoder on CPU, runtime by runtime: time per 256² slice, features and decoded masks vs torch.

Slices of the shared chest CT (windowed as the pipeline does), box prompts from its label map (each
structure's bounding box and a jittered copy). Every variant's features are decoded by the same torch
decoder; masks (logits > 0) are compared with the torch fp32 path's. Timings interleave the variants round
by round (the CPU is shared, so medians over rounds); first-call costs (export, compile) are reported apart.

    .venv/bin/python Testing/Analysis/encoder_runtimes.py --rounds 9 [--only openvino_f32,...] [--no-masks]
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from PromptRegLib.models.base import Embedding, SliceGeometry
from PromptRegLib.models.cache import EmbeddingCache
from PromptRegLib.models.litemedsam import LiteMedSAM

try:  # the pipeline's windowing, wherever the core rewrite keeps it
    from PromptRegLib.views.slices import intensity_window
except ImportError:
    from PromptRegLib.volume import intensity_window

DATA = Path(os.environ.get("PROMPTREG_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")) / "ctchest4"
SLICES = (8, 13, 17, 21, 26)


def load_slices_and_boxes(rng: np.random.Generator):
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "ct.nrrd"))).astype(np.float32)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "ct_labels.nii.gz")))
    low, high = intensity_window(ct)
    spacing = sitk.ReadImage(str(DATA / "ct.nrrd")).GetSpacing()
    slices, boxes = [], []
    for z in SLICES:
        slices.append(np.clip((ct[z] - low) / (high - low), 0, 1).astype(np.float32))
        slice_boxes = []
        for value in np.unique(labels[z]):
            ys, xs = np.nonzero(labels[z] == value)
            if value == 0 or len(xs) < 30:
                continue
            box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=float)
            slice_boxes += [box, box + rng.uniform(-3, 3, 4)]
        boxes.append(np.array(slice_boxes))
    return slices, boxes, (spacing[1], spacing[0])


def encoder_variants(model: LiteMedSAM, workdir: Path, only: set[str] | None):
    """name → (setup() → encode(inputs (1,3,S,S) torch) → features torch)."""
    encoder = model.net.image_encoder
    example = torch.rand(1, 3, 256, 256)

    def torch_today():
        return model._encode_inputs

    def promptreg_default():
        os.environ["PROMPTREG_ENCODER_RUNTIME"] = "auto"
        try:
            shipped = LiteMedSAM(device="cpu", cache=EmbeddingCache(None))
        finally:
            os.environ["PROMPTREG_ENCODER_RUNTIME"] = "torch"
        with torch.inference_mode():
            shipped._encode_inputs(example)  # the runtime is chosen at the first encoding
        print(f"  promptreg default: {shipped.encoder_runtime}", flush=True)
        return shipped._encode_inputs

    def torch_threads(n):
        def setup():
            def run(inputs):
                before = torch.get_num_threads()
                torch.set_num_threads(n)
                try:
                    return model._encode_inputs(inputs)
                finally:
                    torch.set_num_threads(before)
            return run
        return setup

    def torch_nchw():
        plain = copy.deepcopy(encoder).to(memory_format=torch.contiguous_format)
        return lambda inputs: plain(inputs.contiguous())

    def torch_bf16():
        def run(inputs):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model._encode_inputs(inputs).float()
        return run

    def torch_compile():
        compiled = torch.compile(encoder)
        return lambda inputs: compiled(inputs.contiguous(memory_format=torch.channels_last))

    def onnx_path():
        path = workdir / "encoder.onnx"
        if not path.is_file():
            torch.onnx.export(encoder, (example,), str(path), dynamo=False, input_names=["image"],
                              output_names=["features"], opset_version=17,
                              dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}})
        return path

    def onnxruntime_fp32():
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(onnx_path()), options, providers=["CPUExecutionProvider"])
        return lambda inputs: torch.from_numpy(session.run(None, {"image": inputs.numpy()})[0])

    def openvino(precision):
        def setup():
            import openvino as ov
            core = ov.Core()
            path = workdir / "encoder.xml"
            if not path.is_file():
                converted = ov.convert_model(encoder, example_input=example)
                ov.save_model(converted, str(path), compress_to_fp16=False)
            config = {"INFERENCE_NUM_THREADS": torch.get_num_threads()}
            if precision is not None:
                config["INFERENCE_PRECISION_HINT"] = precision
            compiled = core.compile_model(str(path), "CPU", config)
            print(f"  openvino {precision or 'default'}: runs in "
                  f"{compiled.get_property('INFERENCE_PRECISION_HINT')} on "
                  f"{compiled.get_property('INFERENCE_NUM_THREADS')} threads", flush=True)
            request = compiled.create_infer_request()
            return lambda inputs: torch.from_numpy(request.infer([inputs.numpy()])[0].copy())
        return setup

    variants = {
        "torch": torch_today,
        "torch_1thread": torch_threads(1),
        "torch_nchw": torch_nchw,
        "torch_bf16": torch_bf16,
        "torch_compile": torch_compile,
        "onnxruntime_fp32": onnxruntime_fp32,
        "openvino_f32": openvino("f32"),
        "openvino_default": openvino(None),
        "promptreg_default": promptreg_default,
    }
    return {name: setup for name, setup in variants.items() if only is None or name in only}


def decode_masks(model: LiteMedSAM, features, geometries, boxes) -> list[np.ndarray]:
    """Masks (logits > 0) of every box prompt, decoded by the torch decoder from the given features."""
    masks = []
    for feature, geometry, slice_boxes in zip(features, geometries, boxes):
        logits, _ = model.decode([Embedding(feature[0], geometry)] * len(slice_boxes), boxes_xy=slice_boxes)
        masks += list((logits > 0).numpy())
    return masks


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--only", help="comma-separated variant names (torch is always run)")
    parser.add_argument("--threads", type=int, help="threads of every runtime (default: torch's default)")
    parser.add_argument("--no-masks", action="store_true", help="time and compare features only (decoding is slow)")
    args = parser.parse_args()
    os.environ["PROMPTREG_ENCODER_RUNTIME"] = "torch"  # the reference: LiteMedSAM's torch path
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    slices, boxes, spacing = load_slices_and_boxes(np.random.default_rng(0))
    model = LiteMedSAM(device="cpu", cache=EmbeddingCache(None))
    geometries = [SliceGeometry.fit(*s.shape, spacing, model.input_size) for s in slices]
    inputs = [g.slice_to_input(s, model._normalize)[None] for g, s in zip(geometries, slices)]
    only = None if not args.only else set(args.only.split(",")) | {"torch"}
    workdir = Path(tempfile.gettempdir()) / "encoder-runtimes"  # exports kept between runs of this script
    workdir.mkdir(exist_ok=True)
    runners, first_call = {}, {}
    for name, setup in encoder_variants(model, workdir, only).items():
        start = time.perf_counter()
        try:
            run = setup()
            with torch.inference_mode():
                run(inputs[0])
        except Exception as error:  # a runtime that cannot run here is a row, not a crash
            print(f"{name}: unavailable ({type(error).__name__}: {str(error).splitlines()[0][:160]})", flush=True)
            continue
        first_call[name] = time.perf_counter() - start
        runners[name] = run
        print(f"{name}: set-up + first call {first_call[name]:.1f} s", flush=True)

    times: dict[str, list[float]] = {name: [] for name in runners}
    cpu_times: dict[str, list[float]] = {name: [] for name in runners}
    loads = [os.getloadavg()[0]]
    with torch.inference_mode():
        for round_index in range(args.rounds):
            x = inputs[round_index % len(inputs)]
            for name, run in runners.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                run(x)
                times[name].append(time.perf_counter() - start)
                cpu_times[name].append(time.process_time() - start_cpu)
    loads.append(os.getloadavg()[0])
    print("median s/slice:", {name: f"{statistics.median(values):.3f}" for name, values in times.items()}, flush=True)


    with torch.inference_mode():
        features = {name: [run(x).float() for x in inputs] for name, run in runners.items()}
    max_diff = {name: max(float((f - r).abs().max()) for f, r in zip(feats, features["torch"]))
                for name, feats in features.items()}
    print("max abs feature difference vs torch:", {k: f"{v:.1e}" for k, v in max_diff.items()}, flush=True)
    ious: dict[str, list[float]] = {}
    if not args.no_masks:
        reference = decode_masks(model, features["torch"], geometries, boxes)
        for name, feats in features.items():
            masks = reference if name == "torch" else decode_masks(model, feats, geometries, boxes)
            ious[name] = [iou(a, b) for a, b in zip(masks, reference)]
            print(f"{name}: mask IoU mean {np.mean(ious[name]):.4f}, worst {np.min(ious[name]):.4f}", flush=True)

    print(f"\n{len(inputs)} slices, {sum(map(len, boxes))} box prompts, {args.rounds} interleaved rounds, "
          f"torch threads {torch.get_num_threads()}, load average {loads[0]:.2f} → {loads[1]:.2f}")
    print("| encoder | median s/slice | min–max s | median CPU s | first call s | max abs diff vs torch "
          "| mask IoU mean | worst |")
    print("|---|---|---|---|---|---|---|---|")
    for name, values in times.items():
        mean_iou, worst_iou = (f"{np.mean(ious[name]):.4f}", f"{np.min(ious[name]):.4f}") if ious else ("–", "–")
        print(f"| {name} | {statistics.median(values):.3f} | {min(values):.3f}–{max(values):.3f} | "
              f"{statistics.median(cpu_times[name]):.3f} | {first_call[name]:.1f} | {max_diff[name]:.1e} | "
              f"{mean_iou} | {worst_iou} |")


if __name__ == "__main__":
    main()
