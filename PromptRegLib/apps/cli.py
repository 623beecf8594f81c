"""The ``promptreg`` command line: segment, register, batch, demo, bench, cache.

Errors of ours print one line (``promptreg: error: …``) and exit with the error's code; nothing is
half-written. The library is imported inside each command, so ``promptreg --help`` answers without loading torch.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ..errors import PromptError, PromptRegError
from ..io.points import (
    parse_box,
    parse_pair,
    parse_point,
    parse_point_list,
    read_markups,
)
from .progress import ProgressBar

#: a token that starts like a negative number ("-71.2,-33.6,…", "-83:…") is a coordinate value, never an option
COORDINATE_VALUE = re.compile(r"^-[\d.]")


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    from ..models import MODEL_NAMES

    parser.add_argument("--model", default="litemedsam", choices=MODEL_NAMES,
                        help="promptable model (default: the embedded LiteMedSAM)")
    parser.add_argument("--checkpoint", help="model checkpoint file (SAM and SAM-Med3D need one)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_prompt_arguments(parser: argparse.ArgumentParser, image: str) -> None:
    parser.add_argument("--prompt", action="append", help=f"click R,A,S in mm on the {image} (repeatable)")
    parser.add_argument("--prompts", action="append", help="Slicer markups .mrk.json with clicks")
    parser.add_argument("--box", action="append", help=f"box R1,A1,S1,R2,A2,S2 in mm on the {image} (repeatable)")


def _clicks(args) -> tuple[list, list]:
    """(clicks, boxes) in RAS mm from ``--prompt``, ``--prompts`` files and ``--box``."""
    points = [parse_point(p) for p in args.prompt or []]
    for path in args.prompts or []:
        points += read_markups(path)
    return points, [parse_box(b) for b in args.box or []]


def command_segment(args) -> int:
    from ..core.image import ras_to_lps, read_image
    from ..io.figure import segment_color
    from ..io.outputs import staged_output, write_segmentation
    from ..models import load_model
    from ..prompting.pairs import segment_prompts
    from ..views import make_view

    image = read_image(args.image)
    points, boxes = _clicks(args)
    if not points and not boxes:
        raise PromptError("give at least one --prompt R,A,S, --prompts FILE.mrk.json or --box.")
    progress = ProgressBar(args.quiet)
    model = load_model(args.model, args.checkpoint, args.device)
    view = make_view(model, image, progress=progress)
    rois = segment_prompts(view, [ras_to_lps(p)[: image.dimension] for p in points],
                           [ras_to_lps(b.reshape(2, -1))[:, : image.dimension].ravel() for b in boxes])
    progress.close()
    output = Path(args.output)
    names = [f"Prompt {i + 1}" for i in range(len(rois))]
    with staged_output(output.parent, [image.source]) as staging:
        write_segmentation(staging / output.name, image, [view.to_image_mask(r.mask) for r in rois], names,
                           [segment_color(i) for i in range(len(rois))], exclusive=not args.overlap)
    for name, roi in zip(names, rois):
        print(f"{name}: {view.to_image_mask(roi.mask).sum()} voxels, predicted IoU {roi.iou:.2f}")
    print(f"wrote {output}")
    return 0


def command_register(args) -> int:
    from ..io.outputs import write_registration
    from ..pipeline.options import Prompts, RegistrationOptions
    from ..pipeline.registration import register

    points, boxes = _clicks(args)
    prompts = Prompts(tuple(points), tuple(parse_point_list(p) for p in args.prompt_px or []), tuple(boxes),
                      tuple(parse_pair(p) for p in args.pair or []))
    options = RegistrationOptions.from_mapping(vars(args))
    progress = ProgressBar(args.quiet)
    try:
        result = register(args.fixed, args.moving, prompts, options, progress=progress)
        progress("writing outputs", 0.95)
        write_registration(result, args.output)
    finally:
        progress.close()
    if prompts.count == 0:
        print(f"no clicks given: registered from {result.report['pair_options']['auto_pairs']} automatic pairs")
    print(f"{len(result.accepted_pairs)} of {len(result.pairs)} ROI pairs used; outputs in {args.output}")
    if any(pair.source == "fallback" for pair in result.pairs):
        print("warning: no pair from your prompts passed its checks, so the transform comes from sampled (auto) "
              "pairs; see pairs.png, and click on structures visible in both images", file=sys.stderr)
    folding = result.report.get("folding_fraction", 0.0)
    if folding > 0.01:
        print(f"warning: the transform folds {100 * folding:.1f} % of the fixed grid; check the pairs in pairs.png "
              "and reject doubtful ones, or raise --bending", file=sys.stderr)
    for pair in result.pairs:
        status = "used" if pair.accepted else f"dropped: {pair.rejected_because}"
        print(f"  {pair.name}: IoU {pair.quality['iou_x']:.2f}/{pair.quality['iou_y']:.2f}, {status}")
    return 0


def command_batch(args) -> int:
    from .batch import run_batch

    records = run_batch(args.pairs, args.output, scheduler=args.scheduler, workers=args.workers,
                        threads_per_worker=args.threads_per_worker, retry_failed=args.retry_failed, quiet=args.quiet)
    failed = [r for r in records if r["status"] != "done"]
    print(f"{len(records) - len(failed)} of {len(records)} pairs done; summary in {Path(args.output) / 'summary.csv'}")
    if failed:
        codes = ", ".join(f"{r['id']} (exit {r.get('exit_code')})" for r in failed)
        print(f"promptreg: {len(failed)} pair(s) failed: {codes}; their messages are in summary.csv", file=sys.stderr)
        return 1
    return 0


def command_demo(args) -> int:
    from .bench.cases import load_cases
    from .bench.methods import run_promptreg_case

    cases = [c for c in load_cases(args.data) if c.demo]
    if not cases:
        raise PromptRegError(f"no demo data found under {args.data} (expected ctchest4/); pass --data.")
    for case in cases:
        print(f"registering {case.name} …", flush=True)
        row = run_promptreg_case(case, Path(args.output) / case.name, quiet=args.quiet)
        dice = ", ".join(f"{k} {v:.3f}" for k, v in row["dice"].items())
        before = ", ".join(f"{k} {v:.3f}" for k, v in row["dice_before"].items())
        tre = f"; TRE {row['tre_mm']:.2f} mm (before {row['tre_before_mm']:.2f})" if row.get("tre_mm") is not None else ""
        print(f"  Dice {dice} (before {before}){tre}; {row['seconds']:.0f} s")
        print(f"  outputs: {(Path(args.output) / case.name).resolve()}")
    return 0


def command_bench(args) -> int:
    from .bench.run import Limits, run_bench

    limits = Limits(timeout_s=args.timeout)
    if args.max_memory_mb is not None:
        limits.max_memory_mb = args.max_memory_mb
    run_bench(args.data, args.output, quick=args.quick, methods=args.methods, quiet=args.quiet, limits=limits,
              click_sets=args.click_sets, auto_pairs=args.auto_pairs, work_dir=args.work, case_names=args.cases)
    return 0


def command_cache(args) -> int:
    from ..models.cache import describe_disk_caches

    print("\n".join(describe_disk_caches(clear=args.clear)))
    return 0


def _segment_parser(commands) -> None:
    segment = commands.add_parser("segment", help="segment the regions prompts point at")
    segment.add_argument("image")
    _add_prompt_arguments(segment, "image")
    segment.add_argument("-o", "--output", required=True, help="output .seg.nrrd")
    segment.add_argument("--overlap", action="store_true",
                         help="keep overlapping segments in layers (default: smaller segments win, as Slicer's "
                              "'overwrite other segments')")
    _add_model_arguments(segment)
    segment.set_defaults(run=command_segment)


def _register_parser(commands) -> None:
    from ..pipeline.presets import PRESETS
    from ..transform.fit import TRANSFORMS

    register = commands.add_parser("register", help="register MOVING to FIXED from corresponding regions",
                                   description="Register MOVING to FIXED. Without any click, from automatic pairs.")
    register.add_argument("fixed")
    register.add_argument("moving")
    register.add_argument("-o", "--output", required=True, help="output folder")
    _add_prompt_arguments(register, "fixed image")
    register.add_argument("--prompt-px", action="append",
                          help="click X,Y[,Z] in pixels of the fixed image (X = column, Y = row, Z = slice; from 0, "
                               "the image's own index order; repeatable) — for images without physical units")
    register.add_argument("--pair", action="append",
                          help="a correspondence you know, R,A,S:R,A,S = Prompt X on the fixed image : Prompt Y on "
                               "the moving image (mm, repeatable); ROI Y is segmented at Prompt Y, no search")
    register.add_argument("--auto-pairs", type=int, help="sampled prompts on top of yours (default 6 in 2D, 0 in 3D, "
                                                          "8 with no clicks or when every pair of yours fails; 0: none)")
    register.add_argument("--warps", type=int, help="spatial perturbations per ROI (default 2 in 2D, 0 in 3D)")
    register.add_argument("--preset", choices=PRESETS,
                          help="quick: an affine from the clicks; default; accurate: denser (2D) — options you "
                               "give explicitly win")
    register.add_argument("--transform", choices=TRANSFORMS, help="default deformable")
    register.add_argument("--bending", type=float, help="regularisation weight (default 10)")
    register.add_argument("--feature-weight", type=float,
                          help="weight of the dense refinement on the model's features (default 2; 0: ROI pairs only)")
    register.add_argument("--mind-weight", type=float,
                          help="weight of the MIND-SSC structure term beside the features (default 2; 0: off)")
    register.add_argument("--pairs-only", action="store_true", help="find ROI pairs, fit no transform")
    _add_model_arguments(register)
    register.set_defaults(run=command_register)


def _batch_parser(commands) -> None:
    batch = commands.add_parser("batch", help="register every pair of a CSV table on Dask (resumable)",
                                description="Register every row of PAIRS.csv (id,fixed,moving,prompts[,options]) "
                                            "into OUTPUT/<id>/ on Dask; see docs/cohorts.md.")
    batch.add_argument("pairs", help="PAIRS.csv: id,fixed,moving,prompts (+ optional columns); paths relative to it")
    batch.add_argument("-o", "--output", required=True, help="output folder: one sub-folder per pair id, summary.*")
    batch.add_argument("--scheduler", help="address of a running Dask scheduler (tcp://host:8786); default: a local "
                                           "cluster sized to this machine")
    batch.add_argument("--workers", type=int, help="local worker processes (default: cores / threads, fewer when "
                                                   "memory is short)")
    batch.add_argument("--threads-per-worker", type=int,
                       help="compute threads each pair uses (local cluster default: 2, or the cores shared among "
                            "--workers; each worker runs one pair at a time)")
    batch.add_argument("--retry-failed", action="store_true",
                       help="also re-run pairs that failed before with an input, prompt or no-pair error")
    batch.add_argument("--quiet", action="store_true", help="no progress bar")
    batch.set_defaults(run=command_batch)


def _demo_parser(commands) -> None:
    demo = commands.add_parser("demo", help="register the shared example pairs and write all outputs")
    demo.add_argument("--data", default="../shared/data")
    demo.add_argument("-o", "--output", default="out/demo")
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(run=command_demo)


def _bench_parser(commands) -> None:
    from .bench.run import DEFAULT_TIMEOUT_S, NO_CLICK_AUTO_PAIRS

    bench = commands.add_parser("bench", help="compare PromptReg with intensity-based registration")
    bench.add_argument("--data", default="../shared/data")
    bench.add_argument("-o", "--output", default="out/bench")
    bench.add_argument("--quick", action="store_true", help="fewer cases and iterations (under 10 minutes)")
    bench.add_argument("--cases", help="comma-separated subset of cases (default: all with data)")
    bench.add_argument("--methods", help="comma-separated subset of methods (promptreg, promptreg-auto, simpleitk, "
                       "elastix, ants, convexadam; default: all installed)")
    bench.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                       help=f"seconds one method may run on one case before it becomes an error row "
                            f"(default {DEFAULT_TIMEOUT_S:.0f})")
    bench.add_argument("--max-memory-mb", type=float,
                       help="resident memory (MB) one run may hold before it is killed and becomes an error row "
                            "(default: 3/4 of the physical memory; enforced on Linux)")
    bench.add_argument("--click-sets", type=int,
                       help="PromptReg re-runs with click sets drawn inside the labelled structures, for the click-set "
                            "spread (default 5; 0 with --quick; 0 disables)")
    bench.add_argument("--auto-pairs", type=int, default=NO_CLICK_AUTO_PAIRS,
                       help=f"sampled prompts of the zero-click promptreg-auto rows (default {NO_CLICK_AUTO_PAIRS})")
    bench.add_argument("--work", help="folder for derived case files such as resampled images, reused across runs "
                                      "(default: OUTPUT/work)")
    bench.add_argument("--quiet", action="store_true")
    bench.set_defaults(run=command_bench)


def _cache_parser(commands) -> None:
    cache = commands.add_parser("cache", help="where the embedding cache and exported networks are, their size; "
                                              "--clear empties them ($PROMPTREG_CACHE, $PROMPTREG_CACHE_MAX_MB)")
    cache.add_argument("--info", action="store_true", help="tell place and size (the default)")
    cache.add_argument("--clear", action="store_true", help="delete cached embeddings and exported networks")
    cache.set_defaults(run=command_cache)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="promptreg", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (_segment_parser, _register_parser, _batch_parser, _demo_parser, _bench_parser, _cache_parser):
        add(commands)
    return parser


def attach_coordinates(argv: list[str]) -> list[str]:
    """``--pair -71,-33,-140:…`` → ``--pair=-71,-33,-140:…`` for every option: argparse would read a value that
    starts with a minus sign as an option of its own (:data:`COORDINATE_VALUE`)."""
    joined: list[str] = []
    for token in argv:
        previous = joined[-1] if joined else ""
        if COORDINATE_VALUE.match(token) and previous.startswith("-") and "=" not in previous \
                and not COORDINATE_VALUE.match(previous):
            joined[-1] = f"{previous}={token}"
        else:
            joined.append(token)
    return joined


def main(argv=None) -> int:
    args = build_parser().parse_args(attach_coordinates(list(sys.argv[1:] if argv is None else argv)))
    try:
        return args.run(args)
    except PromptRegError as error:
        print(f"promptreg: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("promptreg: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
