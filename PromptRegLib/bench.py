"""``promptreg bench`` and the demo: PromptReg and intensity-based peers on the shared pairs, one run.

A case is a small JSON file (``PromptRegLib/cases/*.json``; paths relative to the data folder):
``fixed``, ``moving``, optional ``fixed_labels``/``moving_labels`` with ``labels`` {value: name} to score,
``truth_transform`` (ITK, fixed → moving) or ``landmarks_csv`` (id,fixed_x,fixed_y,moving_x,moving_y in pixels),
``prompts_ras`` (clicks on the fixed image), and flags ``demo``/``quick``. Add a file to add a case.

Each (case, method) runs in its own process so wall time and peak memory are the method's own.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import resource
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputImageError


@dataclass
class Case:
    name: str
    data_dir: Path
    fixed: str
    moving: str
    prompts_ras: list
    description: str = ""
    fixed_labels: str | None = None
    moving_labels: str | None = None
    labels: dict = field(default_factory=dict)
    truth_transform: str | None = None
    landmarks_csv: str | None = None
    prompt_names: list = field(default_factory=list)
    auto_pairs: int | None = None
    multimodal: bool = False
    prompt_source: str = ""
    demo: bool = False
    quick: bool = False

    def path(self, relative: str | None) -> str | None:
        return None if relative is None else str(self.data_dir / relative)


def load_cases(data_dir: str | Path, extra_dir: str | Path | None = None) -> list[Case]:
    """Cases whose files exist under ``data_dir`` (the shipped ones, plus any JSON in ``extra_dir``)."""
    data_dir = Path(data_dir)
    files = sorted(resources.files("PromptRegLib.cases").iterdir(), key=lambda f: f.name)
    if extra_dir:
        files += sorted(Path(extra_dir).glob("*.json"))
    cases = []
    for file in files:
        if not file.name.endswith(".json"):
            continue
        fields = json.loads(file.read_text())
        case = Case(data_dir=data_dir, **fields)
        if Path(case.path(case.fixed)).is_file() and Path(case.path(case.moving)).is_file():
            cases.append(case)
    return cases


# --- scoring -----------------------------------------------------------------------------------------------
def score(case: Case, transform: sitk.Transform | None) -> dict:
    """Dice per labelled structure and TRE (mm, or pixels for photos) of a fixed → moving transform."""
    from .metrics import dice_per_label, labelled_points, target_registration_error, transform_points, warp_labels

    row: dict = {}
    if case.fixed_labels and case.moving_labels:
        fixed_labels = sitk.ReadImage(case.path(case.fixed_labels))
        moving_labels = sitk.ReadImage(case.path(case.moving_labels))
        if fixed_labels.GetDimension() == 3 and fixed_labels.GetSize()[2] == 1:
            fixed_labels, moving_labels = fixed_labels[:, :, 0], moving_labels[:, :, 0]
        warped = warp_labels(moving_labels, fixed_labels, transform)
        values = [int(v) for v in case.labels]
        scores = dice_per_label(sitk.GetArrayFromImage(fixed_labels), warped, values)
        row["dice"] = {case.labels[str(v)]: scores[v] for v in values}
        row["dice_mean"] = float(np.mean(list(row["dice"].values())))
        if case.truth_transform:
            truth = sitk.ReadTransform(case.path(case.truth_transform))
            points = labelled_points(fixed_labels, max_points=5000)
            row["tre_mm"] = float(target_registration_error(transform, truth, points).mean())
    if case.landmarks_csv:
        table = np.loadtxt(case.path(case.landmarks_csv), delimiter=",", skiprows=1)
        fixed_image = sitk.ReadImage(case.path(case.fixed))
        moving_image = sitk.ReadImage(case.path(case.moving))
        fixed_points = np.array([fixed_image.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in table[:, 1:3]])
        moving_points = np.array([moving_image.TransformContinuousIndexToPhysicalPoint(p.tolist())
                                  for p in table[:, 3:5]])
        predicted = fixed_points if transform is None else transform_points(transform, fixed_points)
        row["tre_mm"] = float(np.linalg.norm(predicted - moving_points, axis=1).mean())
    return row


# --- methods -----------------------------------------------------------------------------------------------
def _promptreg(case: Case, output_dir: Path | None, quick: bool, quiet: bool = True) -> tuple[sitk.Transform, dict]:
    from .cli import ProgressBar
    from .outputs import write_registration
    from .pairs import PairOptions
    from .registration import register

    pair_options = PairOptions()
    if case.auto_pairs is not None:
        pair_options.auto_pairs = case.auto_pairs
    progress = ProgressBar(quiet)
    try:
        result = register(case.path(case.fixed), case.path(case.moving), case.prompts_ras,
                          pair_options=pair_options, progress=progress)
    finally:
        progress.close()
    if output_dir is not None:
        write_registration(result, output_dir)
    extra = {"pairs_used": len(result.accepted_pairs), "pairs_found": len(result.pairs),
             "folding": result.report["folding_fraction"]}
    return result.transform.to_sitk(), extra


def _read_for_peer(path: str) -> sitk.Image:
    from .imageio import read_image
    return sitk.Cast(read_image(path).sitk_image, sitk.sitkFloat32)


def _simpleitk(case: Case, output_dir, quick: bool, quiet: bool = True) -> tuple[sitk.Transform, dict]:
    """SimpleITK: centred affine then a B-spline, multi-resolution, normalised correlation (same-modality pairs;
    Mattes MI where fixed and moving differ in modality) — the usual recipe from its notebooks."""
    fixed, moving = _read_for_peer(case.path(case.fixed)), _read_for_peer(case.path(case.moving))
    dimension = fixed.GetDimension()
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(dimension),
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)

    multimodal = case.multimodal

    def set_metric(registration: sitk.ImageRegistrationMethod) -> None:
        registration.SetMetricAsMattesMutualInformation(32) if multimodal else registration.SetMetricAsCorrelation()

    def method(iterations: int) -> sitk.ImageRegistrationMethod:
        registration = sitk.ImageRegistrationMethod()
        set_metric(registration)
        registration.SetMetricSamplingStrategy(registration.RANDOM)
        registration.SetMetricSamplingPercentage(0.2, seed=1)
        registration.SetInterpolator(sitk.sitkLinear)
        registration.SetShrinkFactorsPerLevel([4, 2, 1])
        registration.SetSmoothingSigmasPerLevel([2, 1, 0])
        registration.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        registration.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3,
                                                              numberOfIterations=iterations, relaxationFactor=0.5)
        registration.SetOptimizerScalesFromPhysicalShift()
        return registration

    iterations = 50 if quick else 200
    affine_registration = method(iterations)
    affine_registration.SetInitialTransform(initial, inPlace=False)
    affine = affine_registration.Execute(fixed, moving)
    mesh = [8] * dimension
    bspline = sitk.BSplineTransformInitializer(fixed, mesh)
    deformable = sitk.ImageRegistrationMethod()
    set_metric(deformable)
    deformable.SetMetricSamplingStrategy(deformable.RANDOM)
    deformable.SetMetricSamplingPercentage(0.1, seed=1)
    deformable.SetInterpolator(sitk.sitkLinear)
    deformable.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=20 if quick else 100)
    deformable.SetShrinkFactorsPerLevel([2, 1])
    deformable.SetSmoothingSigmasPerLevel([1, 0])
    deformable.SetMovingInitialTransform(affine)
    deformable.SetInitialTransform(bspline, inPlace=True)
    deformable.Execute(fixed, moving)
    composite = sitk.CompositeTransform([affine, bspline])
    return composite, {}


def _elastix(case: Case, output_dir, quick: bool, quiet: bool = True) -> tuple[sitk.Transform, dict]:
    """elastix (itk-elastix): affine + B-spline default parameter maps."""
    import itk

    fixed = itk.imread(case.path(case.fixed), itk.F)
    moving = itk.imread(case.path(case.moving), itk.F)
    parameters = itk.ParameterObject.New()
    for name in ("affine", "bspline"):
        parameter_map = parameters.GetDefaultParameterMap(name, 3 if quick else 4)
        parameter_map["MaximumNumberOfIterations"] = ["100" if quick else "500"]
        parameters.AddParameterMap(parameter_map)
    _, result_parameters = itk.elastix_registration_method(fixed, moving, parameter_object=parameters,
                                                           log_to_console=False)
    working_dir = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:  # transformix drops deformationField.nii in the cwd
        os.chdir(scratch)
        try:
            field = itk.transformix_deformation_field(moving, result_parameters)
        finally:
            os.chdir(working_dir)
    displacement = sitk.GetImageFromArray(itk.array_from_image(field).astype(np.float64), isVector=True)
    reference = sitk.ReadImage(case.path(case.fixed))
    displacement.CopyInformation(reference if reference.GetDimension() == displacement.GetDimension()
                                 else reference[:, :, 0])
    return sitk.DisplacementFieldTransform(displacement), {}


def _ants(case: Case, output_dir, quick: bool, quiet: bool = True) -> tuple[sitk.Transform, dict]:
    """ANTs SyN (antspyx), its default recipe."""
    import ants

    fixed, moving = ants.image_read(case.path(case.fixed)), ants.image_read(case.path(case.moving))
    result = ants.registration(fixed, moving, type_of_transform="SyNRA" if not quick else "SyN")
    composite = sitk.CompositeTransform(fixed.dimension)
    for path in result["fwdtransforms"][::-1]:
        composite.AddTransform(sitk.ReadTransform(path) if path.endswith(".mat") else
                               sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(path), sitk.sitkVectorFloat64)))
    return composite, {}


METHODS = {"promptreg": _promptreg, "simpleitk": _simpleitk, "elastix": _elastix, "ants": _ants}
OPTIONAL = {"elastix": "itk", "ants": "ants"}


def available_methods() -> list[str]:
    import importlib.util
    return [m for m in METHODS if m not in OPTIONAL or importlib.util.find_spec(OPTIONAL[m]) is not None]


def _run_in_child(name: str, case: Case, output_dir, quick: bool, queue) -> None:
    os.environ["PROMPTREG_CACHE"] = "off"  # cold start: a method's time includes encoding the images
    try:
        started = time.perf_counter()
        transform, extra = METHODS[name](case, output_dir, quick)
        seconds = time.perf_counter() - started
        row = {"case": case.name, "method": name, **score(case, transform), **extra, "seconds": seconds,
               "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        queue.put(row)
    except Exception as error:  # reported in the table, never hides the other methods
        queue.put({"case": case.name, "method": name, "error": f"{type(error).__name__}: {error}"})


def run_method(name: str, case: Case, output_dir=None, quick: bool = False) -> dict:
    """Run one method on one case in a fresh process; returns its row."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run_in_child, args=(name, case, output_dir, quick, queue))
    process.start()
    row = queue.get()
    process.join()
    return row


def run_promptreg_case(case: Case, output_dir: Path, quiet: bool = False) -> dict:
    """The demo's job: register one case with PromptReg in this process, write outputs, score before/after."""
    started = time.perf_counter()
    transform, extra = _promptreg(case, output_dir, quick=False, quiet=quiet)
    row = {"case": case.name, **score(case, transform), **extra, "seconds": time.perf_counter() - started}
    before = score(case, None)
    row["dice_before"], row["tre_before_mm"] = before.get("dice", {}), before.get("tre_mm")
    (Path(output_dir) / "scores.json").write_text(json.dumps(row, indent=2))
    return row


def _markdown(rows: list[dict]) -> str:
    lines = ["| case | method | Dice mean | TRE | folding | seconds | peak MB | time ratio PromptReg/peer | Dice ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['case']} | {row['method']} | error: {row['error'][:80]} | | | | | | |")
            continue
        fmt = lambda v, f="{:.3f}": "" if v is None else f.format(v)
        lines.append(f"| {row['case']} | {row['method']} | {fmt(row.get('dice_mean'))} | {fmt(row.get('tre_mm'), '{:.2f}')}"
                     f" | {fmt(row.get('folding'), '{:.4f}')} | {row['seconds']:.1f} | {row['peak_mb']:.0f} | "
                     f"{fmt(row.get('time_ratio'), '{:.2f}')} | {fmt(row.get('dice_ratio'), '{:.2f}')} |")
    return "\n".join(lines) + "\n"


def _plots(rows: list[dict], output_dir: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = [r for r in rows if "error" not in r and r.get("dice_mean") is not None]
    figure, axis = plt.subplots(figsize=(6, 4))
    for method in sorted({r["method"] for r in good}):
        points = [(r["seconds"], r["dice_mean"]) for r in good if r["method"] == method]
        axis.scatter(*zip(*points), label=method)
    axis.set_xscale("log")
    axis.set_xlabel("wall time (s, log)")
    axis.set_ylabel("mean Dice")
    axis.legend()
    figure.tight_layout()
    figure.savefig(output_dir / "accuracy_vs_time.png", dpi=100)
    plt.close(figure)
    structures = sorted({(r["case"], s) for r in good for s in r.get("dice", {})})
    methods = sorted({r["method"] for r in good})
    figure, axis = plt.subplots(figsize=(max(6, len(structures) * 0.9), 4))
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        values = [next((r["dice"].get(s) for r in good if r["method"] == method and r["case"] == c), np.nan)
                  for c, s in structures]
        axis.bar(np.arange(len(structures)) + i * width, values, width, label=method)
    axis.set_xticks(np.arange(len(structures)) + 0.4 - width / 2)
    axis.set_xticklabels([f"{c}\n{s}" for c, s in structures], rotation=45, ha="right", fontsize=7)
    axis.set_ylabel("Dice")
    axis.legend()
    figure.tight_layout()
    figure.savefig(output_dir / "dice_per_structure.png", dpi=100)
    plt.close(figure)


def run_bench(data_dir, output_dir, quick: bool = False, methods: str | None = None, quiet: bool = False) -> list[dict]:
    """Run every available method on every case (``quick``: the quick cases, fewer iterations)."""
    cases = [c for c in load_cases(data_dir) if c.quick or not quick]
    if not cases:
        raise InputImageError(f"no benchmark data found under {data_dir}; pass --data.")
    chosen = available_methods() if not methods else [m.strip() for m in methods.split(",")]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in cases:
        identity = {"case": case.name, "method": "identity", **score(case, None), "seconds": 0.0, "peak_mb": 0.0}
        rows.append(identity)
        case_rows = []
        for method in chosen:
            if not quiet:
                print(f"{case.name}: {method} …", flush=True)
            row = run_method(method, case, None, quick)
            case_rows.append(row)
            if not quiet and "error" not in row:
                print(f"  Dice {row.get('dice_mean', float('nan')):.3f}, TRE {row.get('tre_mm', float('nan')):.2f}, "
                      f"{row['seconds']:.1f} s, {row['peak_mb']:.0f} MB", flush=True)
            elif not quiet:
                print(f"  {row['error']}", flush=True)
        ours = next((r for r in case_rows if r["method"] == "promptreg" and "error" not in r), None)
        for row in case_rows:
            if ours is not None and "error" not in row and row is not ours:
                row["time_ratio"] = ours["seconds"] / row["seconds"]
                if row.get("dice_mean"):
                    row["dice_ratio"] = ours["dice_mean"] / row["dice_mean"]
        rows.extend(case_rows)
    (output_dir / "bench.json").write_text(json.dumps({"quick": quick, "rows": rows}, indent=2))
    (output_dir / "bench.md").write_text(_markdown(rows))
    _plots(rows, output_dir)
    if not quiet:
        print(_markdown(rows))
        print(f"wrote {output_dir / 'bench.json'}, bench.md and plots")
    return rows
