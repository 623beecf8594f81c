"""The background worker: ``python -m PromptRegLib.apps.worker request.json``.

Reads a request (JSON), runs segmentation pairs, a registration or a refit, and prints one JSON object per
line on stdout: ``{"type": "progress", "stage", "fraction"}``, ``{"type": "result", "output_dir", "files",
"pairs", "device"}`` or ``{"type": "error", "message", "exit_code"}``. SIGTERM cancels cleanly (no outputs
left). This is the only way the Slicer module talks to the library, so a crash here cannot take Slicer down.

Registration request (``"request": "register"``, the default) — keys: ``fixed``, ``moving``, ``output_dir``
(required); ``prompts_ras`` [[R, A, S], …], ``prompts_file`` (.mrk.json), ``boxes_ras``
[[R1, A1, S1, R2, A2, S2], …], ``pairs_ras`` [[[R, A, S], [R, A, S]], …] (Prompt X on fixed, Prompt Y on moving),
``original_files`` {"fixed": path, "moving": path} (the files Slicer loaded the exported volumes from: a
photograph's has no physical units, see ``core.lengths``), and any option by its outside name
(:data:`~PromptRegLib.pipeline.options.OPTION_NAMES`: ``preset``, ``auto_pairs``, ``transform``, …).

Refit request (``"request": "refit"``) — keys: ``pairs_from`` (a previous output folder) and ``output_dir``
(required); ``reject_pairs``, ``prompt_y_ras`` {pair name: [R, A, S]} (the user's corrected Prompt Y on the moving
image), the fit's options (:data:`~PromptRegLib.pipeline.options.REFIT_OPTION_NAMES`); ``fixed``/``moving``
default to the images that run used. The fit from the written ROI pairs and the run's cached features; a
corrected pair's ROI Y is decoded again at its Prompt Y, nothing else is (see ``pipeline.refit``).
"""
from __future__ import annotations

import json
import signal
import sys
import traceback
from pathlib import Path

from ..core.image import read_image
from ..core.lengths import is_photo_file
from ..errors import PromptRegError, UsageError
from ..io.outputs import write_registration
from ..io.points import read_markups
from ..pipeline.options import REFIT_OPTION_NAMES, Prompts, RegistrationOptions
from ..pipeline.refit import refit_from_outputs
from ..pipeline.registration import register

BAD_REQUEST = UsageError.exit_code
REQUIRED = {"register": ("fixed", "moving", "output_dir"), "refit": ("pairs_from", "output_dir")}


def emit(kind: str, **fields) -> None:
    print(json.dumps({"type": kind, **fields}), flush=True)


def read_request(path: str) -> dict:
    try:
        request = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"request file {path} not found") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"request file {path} is not JSON ({error})") from None
    if not isinstance(request, dict):
        raise ValueError("the request must be a JSON object")
    kind = request.get("request", "register")
    if kind not in REQUIRED:
        raise ValueError(f"unknown request {kind!r}; use one of {', '.join(REQUIRED)}")
    missing = [key for key in REQUIRED[kind] if not request.get(key)]
    if missing:
        raise ValueError(f"the request lacks {', '.join(missing)}")
    return request


_last_fraction = [0.0]


def _progress(stage: str, fraction: float | None, done=None, total=None, unit=None) -> None:
    """A progress line; work that does not know the run's share (``fraction`` None) repeats the last one."""
    if fraction is not None:
        _last_fraction[0] = fraction
    counted = {"done": done, "total": total, "unit": unit} if total else {}
    emit("progress", stage=stage, fraction=round(_last_fraction[0], 4), **counted)


def _result(output_dir: Path, refit: bool = False) -> dict:
    """The result event; ``device`` says where this run computed (a refit fits on the CPU)."""
    report = json.loads((output_dir / "report.json").read_text())
    device = report["refit"]["device"] if refit else report.get("device", "cpu")
    return {"output_dir": str(output_dir), "files": sorted(p.name for p in output_dir.iterdir()),
            "pairs": report["pairs"], "device": device}


def _input_image(path: str, original_file: str | None):
    """The exported input; a volume Slicer loaded from a photograph (``original_file``) keeps having no units."""
    image = read_image(path)
    if original_file:
        image.physical_units = not is_photo_file(original_file)
    return image


def run_registration(request: dict, cancelled) -> dict:
    prompts = list(request.get("prompts_ras") or [])
    if request.get("prompts_file"):
        prompts += [p.tolist() for p in read_markups(request["prompts_file"])]
    originals = request.get("original_files") or {}
    fixed, moving = (_input_image(request[name], originals.get(name)) for name in ("fixed", "moving"))
    given = Prompts(points_ras=tuple(prompts), boxes_ras=tuple(request.get("boxes_ras") or ()),
                    pairs_ras=tuple(request.get("pairs_ras") or ()))
    result = register(fixed, moving, given, RegistrationOptions.from_mapping(request), progress=_progress,
                      cancel=cancelled)
    emit("progress", stage="writing outputs", fraction=0.95)
    return _result(write_registration(result, request["output_dir"]))


def run_refit(request: dict, cancelled) -> dict:
    options = RegistrationOptions.from_mapping(request, REFIT_OPTION_NAMES + ("reject_pairs",))
    output_dir = refit_from_outputs(request["pairs_from"], request["output_dir"], options,
                                    request.get("prompt_y_ras") or {}, progress=_progress, cancel=cancelled,
                                    fixed=request.get("fixed"), moving=request.get("moving"))
    return _result(output_dir, refit=True)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cancel_requested = []
    signal.signal(signal.SIGTERM, lambda *_: cancel_requested.append(True))
    if len(argv) != 1:
        emit("error", message="usage: python -m PromptRegLib.apps.worker request.json", exit_code=BAD_REQUEST)
        return BAD_REQUEST
    try:
        request = read_request(argv[0])
    except ValueError as error:
        emit("error", message=f"bad request: {error}", exit_code=BAD_REQUEST)
        return BAD_REQUEST
    run = run_refit if request.get("request") == "refit" else run_registration
    try:
        emit("result", **run(request, lambda: bool(cancel_requested)))
        return 0
    except PromptRegError as error:
        emit("error", message=str(error), exit_code=error.exit_code)
        return error.exit_code
    except Exception as error:  # a bug: say so in one line, details on stderr for the log
        traceback.print_exc()
        emit("error", message=f"internal error: {type(error).__name__}: {error}", exit_code=PromptRegError.exit_code)
        return PromptRegError.exit_code


if __name__ == "__main__":
    sys.exit(main())
