"""The background worker: ``python -m PromptRegLib.apps.worker request.json`` (one request, then it exits) or
``python -m PromptRegLib.apps.worker --serve`` (a long-lived session). This is the only way the Slicer module talks
to the library, so a crash here cannot take Slicer down.

**One request** (a JSON file): runs segmentation pairs, a registration or a refit, and prints one JSON object per
line on stdout: ``{"type": "progress", "stage", "fraction"[, "done", "total", "unit"]}``, ``{"type": "result",
"output_dir", "files", "pairs", "device"}`` or ``{"type": "error", "message", "exit_code"}``. SIGTERM cancels
cleanly (no outputs left).

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

**Serve** (``--serve``): one :class:`~PromptRegLib.pipeline.session.RegistrationSession` — the model, both images'
views and embeddings, the last result — answers requests, one JSON object per line on stdin, each with an ``"id"``
and a ``"request"``; every event on stdout carries the id of the request it answers::

    {"id", "type": "progress", "stage", "fraction"[, "done", "total", "unit"]}
    {"id", "type": "affine", "pairs", "affine_lps": {"matrix", "offset"}, "affine_ras", "transform"}  # shown early
    {"id", "type": "encoded", "slices", "embedding_cache", "seconds"}                      # encode's answer
    {"id", "type": "result", "request", "pairs", "device", "report"[, "output_dir", "files"]}
    {"id", "type": "error", "request", "message", "exit_code"[, "cancelled": true]}

Requests: ``encode`` {fixed, moving, original_files, options} — the views made and every slice encoded;
``register`` {fixed, moving, prompts_ras, prompts_file, boxes_ras, pairs_ras, original_files, output_dir, options}
(its ``affine`` event's ``transform`` names the kind of the final one, "affine" or "deformable");
``add_click`` {prompt_ras: [R, A, S]}; ``correct`` {prompt_y_ras: {pair name: [R, A, S]}}; ``refit``
{reject_pairs} (or, with ``pairs_from``, the refit from an output folder above); these three take
``output_dir``, the fit's options and, optionally, ``fixed``/``moving`` (then refused unless the session holds
those images). Without ``output_dir`` nothing is written (the result event still lists the pairs); with it, the
outputs of :func:`~PromptRegLib.io.outputs.write_registration`, staged. ``cancel`` {target: id; none: all},
``forget`` (drop the images' state), ``shutdown``. One request runs at a time; the others wait in order, except
``cancel``, ``forget`` and ``shutdown``, answered at once (the last two cancel everything), and an ``encode`` of
other images, which cancels a running or waiting ``encode`` first. A cancelled request answers an error with
``"cancelled": true`` within about a second (checked between slices, decoder calls and fit iterations). The worker
exits on ``shutdown``, when stdin closes (its client is gone) and on SIGTERM.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.image import lps_to_ras, read_image
from ..core.lengths import is_photo_file
from ..errors import Cancelled, PromptRegError, UsageError
from ..io.outputs import write_registration
from ..io.points import read_markups
from ..pipeline.options import REFIT_OPTION_NAMES, Prompts, RegistrationOptions
from ..pipeline.refit import refit_from_outputs
from ..pipeline.registration import register
from ..pipeline.session import RegistrationSession, image_identity

BAD_REQUEST = UsageError.exit_code
REQUIRED = {"register": ("fixed", "moving", "output_dir"), "refit": ("pairs_from", "output_dir")}
#: what each request of the server needs
SERVED = {"encode": ("fixed", "moving"), "register": ("fixed", "moving"), "add_click": ("prompt_ras",),
          "correct": ("prompt_y_ras",), "refit": (), "cancel": (), "forget": (), "shutdown": ()}
#: the report's entries a server's result carries
ANSWERED_REPORT = ("embedding_cache", "encoder", "encoded", "timings_s", "quick_affine_s", "dense_refinement",
                   "folding_fraction", "session")
#: how long a stopping server waits for the running request to notice its cancel
STOP_WAIT_S = 2.0


def emit(kind: str, **fields) -> None:
    print(json.dumps({"type": kind, **fields}, default=_plain), flush=True)


def _plain(value):
    """numpy values in events as plain numbers and lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


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


class ProgressLines:
    """``progress(stage, fraction, done, total, unit)`` as progress events through ``emit(kind, **fields)``; work
    that does not know the run's share (``fraction`` None) repeats the last one."""

    def __init__(self, emit_event: Callable[..., None]):
        self.emit, self.fraction = emit_event, 0.0

    def __call__(self, stage: str, fraction: float | None, done=None, total=None, unit=None) -> None:
        if fraction is not None:
            self.fraction = fraction
        counted = {"done": done, "total": total, "unit": unit} if total else {}
        self.emit("progress", stage=stage, fraction=round(self.fraction, 4), **counted)


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


def request_prompts(request: dict) -> Prompts:
    """A registration request's prompts: clicks (and a markups file), boxes and pairs, in RAS mm."""
    prompts = list(request.get("prompts_ras") or [])
    if request.get("prompts_file"):
        prompts += [p.tolist() for p in read_markups(request["prompts_file"])]
    return Prompts(points_ras=tuple(prompts), boxes_ras=tuple(request.get("boxes_ras") or ()),
                   pairs_ras=tuple(request.get("pairs_ras") or ()))


def run_registration(request: dict, cancelled, progress=None) -> dict:
    progress = progress or ProgressLines(emit)
    originals = request.get("original_files") or {}
    fixed, moving = (_input_image(request[name], originals.get(name)) for name in ("fixed", "moving"))
    result = register(fixed, moving, request_prompts(request), RegistrationOptions.from_mapping(request),
                      progress=progress, cancel=cancelled)
    progress("writing outputs", 0.95)
    return _result(write_registration(result, request["output_dir"]))


def run_refit(request: dict, cancelled, progress=None) -> dict:
    options = RegistrationOptions.from_mapping(request, REFIT_OPTION_NAMES + ("reject_pairs",))
    output_dir = refit_from_outputs(request["pairs_from"], request["output_dir"], options,
                                    request.get("prompt_y_ras") or {}, progress=progress or ProgressLines(emit),
                                    cancel=cancelled, fixed=request.get("fixed"), moving=request.get("moving"))
    return _result(output_dir, refit=True)


# --- serving -------------------------------------------------------------------------------------------------
class Lines:
    """JSON lines on one stream, each written whole (the reading thread and the request thread both write). A
    stream whose reader is gone is ignored: the worker then ends when its stdin closes."""

    def __init__(self, stream):
        self.stream, self.lock = stream, threading.Lock()

    def emit(self, event: dict) -> None:
        line = json.dumps(event, default=_plain) + "\n"
        with self.lock:
            try:
                self.stream.write(line)
                self.stream.flush()
            except (OSError, ValueError):
                pass


@dataclass
class Job:
    """A request of the server: its id, kind and fields, its cancel flag and its progress reporter."""

    id: object
    kind: str
    request: dict
    progress: ProgressLines | None = None
    flag: threading.Event = field(default_factory=threading.Event)

    def cancelled(self) -> bool:
        return self.flag.is_set()


class InputImages:
    """The requests' images, read again only when their file (or original file) changed: the session tells images
    apart by object, so an unchanged file is the same image."""

    def __init__(self):
        self.held: dict = {}

    def pair(self, request: dict) -> tuple:
        originals = request.get("original_files") or {}
        images, held = [], {}
        for role in ("fixed", "moving"):
            key = (image_identity(request[role]), originals.get(role))
            image = self.held.get(key) or held.get(key) or _input_image(request[role], originals.get(role))
            held[key] = image
            images.append(image)
        self.held = held  # the latest pair only
        return tuple(images)


def affine_ras(matrix: np.ndarray, offset: np.ndarray) -> list[list[float]]:
    """An affine fixed → moving in LPS mm (d × d, d) as a 4 × 4 homogeneous matrix fixed → moving in RAS mm."""
    dimension = len(offset)
    flip = np.diag([-1.0, -1.0, 1.0][:dimension])
    homogeneous = np.eye(4)
    homogeneous[:dimension, :dimension] = flip @ matrix @ flip
    homogeneous[:dimension, 3] = flip @ offset
    return homogeneous.tolist()


def pair_summary(result) -> list[dict]:
    """The pairs as the report lists them (without the written-output entries: colours, registered Dice)."""
    return [{"name": p.name, "source": p.source, "accepted": p.accepted, "rejected_because": p.rejected_because,
             "rejected_by_user": p.rejected_by_user, "prompt_x_ras": lps_to_ras(p.prompt_x_lps).tolist(),
             "prompt_y_ras": lps_to_ras(p.prompt_y_lps).tolist(), "voxels_x": p.roi_x.voxels,
             "voxels_y": p.roi_y.voxels, **p.quality} for p in result.pairs]


def affine_event(result) -> dict:
    """The quick affine a registration shows before its own fit, with the pairs it came from."""
    transform = result.transform
    return {"pairs": pair_summary(result), "seconds": round(sum(result.report["timings_s"].values()), 3),
            "affine_lps": {"matrix": transform.affine_matrix.tolist(), "offset": transform.affine_offset.tolist()},
            "affine_ras": affine_ras(transform.affine_matrix, transform.affine_offset)}


class Terminated(Exception):
    """SIGTERM reached a serving worker."""


class Server:
    """The long-lived worker (see the module doc): the main thread reads requests and answers ``cancel``, ``forget``
    and ``shutdown`` at once; one request thread runs the others in order on the session."""

    def __init__(self, lines: Lines, session: RegistrationSession | None = None):
        self.lines = lines
        self.session = session or RegistrationSession()
        self.images = InputImages()
        self.queue: deque[Job] = deque()
        self.running: Job | None = None
        self.stopping = False
        self.condition = threading.Condition()
        self.thread = threading.Thread(target=self._work, name="promptreg-requests", daemon=True)

    def emit(self, job_id, kind: str, **fields) -> None:
        self.lines.emit({"id": job_id, "type": kind, **fields})

    def serve(self, stream) -> int:
        """Answer the requests read from ``stream`` until ``shutdown``, its end, or SIGTERM (exit code 130)."""
        self.thread.start()
        code = 0
        try:
            for line in iter(stream.readline, ""):
                if line.strip() and self.receive(line) == "shutdown":
                    break
        except Terminated:
            code = Cancelled.exit_code
        self.stop()
        return code

    def receive(self, line: str) -> str | None:
        """One request line: answered at once (``cancel``, ``forget``, ``shutdown``, a bad request) or queued."""
        job = self._job(line)
        if job is None:
            return None
        with self.condition:
            if job.kind == "cancel":
                target = job.request.get("target")
                hit = self._cancel_where(lambda other: target is None or other.id == target)
                self.emit(job.id, "result", request="cancel", cancelled=hit)
                return job.kind
            if job.kind in ("forget", "shutdown"):
                self._cancel_where(lambda other: True)
            if job.kind == "shutdown":
                self.stopping = True
                self.emit(job.id, "result", request="shutdown")
            elif job.kind == "encode":  # the panel changed a volume: encoding the old ones is wasted
                images = _images_of(job.request)
                self._cancel_where(lambda other: other.kind == "encode" and _images_of(other.request) != images)
            if job.kind != "shutdown":
                self.queue.append(job)
            self.condition.notify_all()
        return job.kind

    def _job(self, line: str) -> Job | None:
        """The request on ``line`` as a job, or None after answering why it cannot be one."""
        try:
            request = json.loads(line)
        except json.JSONDecodeError as error:
            self.emit(None, "error", message=f"bad request: not JSON ({error})", exit_code=BAD_REQUEST)
            return None
        job_id = request.get("id") if isinstance(request, dict) else None
        kind = request.get("request") if isinstance(request, dict) else None
        if job_id is None or kind not in SERVED:
            why = ("every request needs an id" if job_id is None else
                   f"unknown request {kind!r}; use one of {', '.join(SERVED)}")
            self.emit(job_id, "error", message=f"bad request: {why}", exit_code=BAD_REQUEST)
            return None
        missing = [key for key in SERVED[kind] if not request.get(key)]
        if missing:
            self.emit(job_id, "error", request=kind, message=f"bad request: {kind} lacks {', '.join(missing)}",
                      exit_code=BAD_REQUEST)
            return None
        job = Job(job_id, kind, request)
        job.progress = ProgressLines(lambda event, **fields: self.emit(job_id, event, **fields))
        return job

    def _cancel_where(self, chosen: Callable[[Job], bool]) -> list:
        """Cancel the running request and drop the waiting ones that ``chosen`` picks (the condition held)."""
        hit = []
        if self.running is not None and chosen(self.running) and not self.running.flag.is_set():
            self.running.flag.set()
            hit.append(self.running.id)
        for job in [job for job in self.queue if chosen(job)]:
            self.queue.remove(job)
            hit.append(job.id)
            self._cancelled(job)
        return hit

    def _cancelled(self, job: Job) -> None:
        self.emit(job.id, "error", request=job.kind, message=f"{job.kind} cancelled", cancelled=True,
                  exit_code=Cancelled.exit_code)

    def stop(self) -> None:
        """Cancel everything and let the running request end (briefly: its staging is cleaned up as it stops)."""
        with self.condition:
            self.stopping = True
            self._cancel_where(lambda other: True)
            self.condition.notify_all()
        self.thread.join(STOP_WAIT_S)

    def terminate(self, *_) -> None:
        raise Terminated()

    def _work(self) -> None:
        while True:
            with self.condition:
                while not self.queue and not self.stopping:
                    self.condition.wait()
                if not self.queue:
                    return
                job = self.running = self.queue.popleft()
            self._run(job)
            with self.condition:
                self.running = None

    def _run(self, job: Job) -> None:
        """Answer one request: its final event, or one error (a cancel, a clear message, or an internal error)."""
        try:
            if job.cancelled():
                raise Cancelled(f"{job.kind} cancelled")
            kind, fields = getattr(self, f"_{job.kind}")(job)
            self.emit(job.id, kind, request=job.kind, **fields)
        except Cancelled:
            self._cancelled(job)
        except PromptRegError as error:
            self.emit(job.id, "error", request=job.kind, message=str(error), exit_code=error.exit_code)
        except Exception as error:  # a bug: say so in one line, details on stderr for the log
            traceback.print_exc()
            self.emit(job.id, "error", request=job.kind, message=f"internal error: {type(error).__name__}: {error}",
                      exit_code=PromptRegError.exit_code)

    # --- the requests (on the request thread) -------------------------------------------------------------------
    def _encode(self, job: Job) -> tuple[str, dict]:
        fixed, moving = self.images.pair(job.request)
        options = RegistrationOptions.from_mapping(job.request)
        cache = self.session.segmenter(options).cache
        hits, misses, started = cache.hits, cache.misses, time.perf_counter()
        views = self.session.encode(fixed, moving, options, job.progress, job.cancelled)
        return "encoded", {"fixed": job.request["fixed"], "moving": job.request["moving"],
                           "slices": {"fixed": views.fixed.encoded, "moving": views.moving.encoded},
                           "embedding_cache": {"hits": cache.hits - hits, "misses": cache.misses - misses},
                           "seconds": round(time.perf_counter() - started, 3)}

    def _register(self, job: Job) -> tuple[str, dict]:
        fixed, moving = self.images.pair(job.request)
        prompts, options = request_prompts(job.request), RegistrationOptions.from_mapping(job.request)
        final = options.for_run(fixed, prompts)[1].transform  # the kind the run ends with: the panel's node for it
        result = self.session.register(fixed, moving, prompts, options, job.progress, job.cancelled,
                                       on_affine=lambda quick: self.emit(job.id, "affine", **affine_event(quick),
                                                                         transform=final))
        return "result", self._answer(job, result)

    def _add_click(self, job: Job) -> tuple[str, dict]:
        options = self._change_options(job)
        return "result", self._answer(job, self.session.add_click(job.request["prompt_ras"], options, job.progress,
                                                                  job.cancelled))

    def _correct(self, job: Job) -> tuple[str, dict]:
        corrections = job.request["prompt_y_ras"]
        if not isinstance(corrections, dict):
            raise UsageError("bad request: prompt_y_ras must map pair names to [R, A, S].")
        options = self._change_options(job)
        return "result", self._answer(job, self.session.correct(corrections, None, options, job.progress,
                                                                job.cancelled))

    def _refit(self, job: Job) -> tuple[str, dict]:
        if job.request.get("pairs_from"):  # from an output folder, as a one-request worker does
            if not job.request.get("output_dir"):
                raise UsageError("bad request: a refit from pairs_from needs an output_dir.")
            return "result", run_refit(job.request, job.cancelled, job.progress)
        options = self._change_options(job)
        names = job.request.get("reject_pairs") or ()
        names = [n.strip() for n in names.split(";") if n.strip()] if isinstance(names, str) else list(names)
        return "result", self._answer(job, self.session.reject(names, options, job.progress, job.cancelled))

    def _forget(self, job: Job) -> tuple[str, dict]:
        self.session.forget()
        self.images = InputImages()
        return "result", {}

    def _change_options(self, job: Job) -> RegistrationOptions | None:
        """A change's options: the registration's, with the fit's options the request names; and its images, when
        named, must be those the session holds."""
        request = job.request
        if request.get("fixed") and request.get("moving"):
            fixed, moving = self.images.pair(request)
            if self.session.result is not None and not self.session.holds(fixed, moving, self.session.result_options):
                raise UsageError(f"the images changed since the last registration ({request['fixed']}, "
                                 f"{request['moving']}); register them first.")
        base = self.session.result_options
        return RegistrationOptions.from_mapping(request, REFIT_OPTION_NAMES, base) if base is not None else None

    def _answer(self, job: Job, result) -> dict:
        """The result event's fields: the pairs and a few report entries; and the outputs when ``output_dir``."""
        fields = {"pairs": pair_summary(result), "device": result.report.get("device", "cpu"),
                  "report": {key: result.report[key] for key in ANSWERED_REPORT if key in result.report}}
        if job.request.get("output_dir"):
            job.progress("writing outputs", 0.95)
            fields.update(_result(write_registration(result, job.request["output_dir"])))
        return fields


def _images_of(request: dict) -> tuple:
    return request.get("fixed"), request.get("moving"), json.dumps(request.get("original_files"), sort_keys=True)


def serve() -> int:
    """``--serve``: requests on stdin, events on stdout. Whatever else writes to stdout (a library's print) goes to
    stderr, the log, so it cannot break the protocol."""
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    server = Server(Lines(protocol))
    signal.signal(signal.SIGTERM, server.terminate)
    return server.serve(sys.stdin)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--serve"]:
        return serve()
    cancel_requested = []
    signal.signal(signal.SIGTERM, lambda *_: cancel_requested.append(True))
    if len(argv) != 1:
        emit("error", message="usage: python -m PromptRegLib.apps.worker request.json | --serve",
             exit_code=BAD_REQUEST)
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
