"""The panel's long-lived worker without Qt: one worker per scene, the volumes exported once per state, and each
request a handle the panel polls.

* :class:`VolumeExports` — a volume is written once per state (:func:`.mrml.volume_state`) and reused by path: the
  worker tells images apart by file (path, size, modification time), so a volume exported again would be a new
  image, and the embeddings encoded while the user looked would be computed again.
* :class:`Request` — one request: its events, its answer, its run folder (the outputs in ``folder/output``, kept for
  the history; removed when the request fails or is cancelled). It reads like ``WorkerRun`` (``poll``, ``wait``,
  ``cancel``, ``finished``, ``result``, ``error``, ``log_path``, ``cleanup``).
* :class:`PanelSession` — the ``WorkerSession`` (started at the first request; one that died is replaced at the
  next, its unanswered requests answered with one error each), the requests not yet answered, and what the worker
  holds: the encoded views of which images, and which result. A change (add a click, correct a Prompt Y, reject
  pairs) can go to the worker's memory only when it holds the result the scene shows (:meth:`PanelSession.holds`);
  otherwise it is refitted from that result's folder (``refit`` with ``pairs_from``) or registered again.

Imports ``slicer`` (through :mod:`.mrml`) and, when the first request is sent, ``PromptRegLib.apps.worker_client``,
which imports no torch.
"""
from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

from . import mrml

#: the answers that end a request
FINAL = ("result", "encoded", "error")
#: requests whose answer replaces the result the worker holds (a ``refit`` from ``pairs_from`` leaves it alone)
CHANGES = ("register", "add_click", "correct", "refit")


class VolumeExports:
    """The fixed volume (world coordinates) and the moving volume (its own) as NRRD files under one folder, written
    again only when :func:`.mrml.volume_state` changes, each new state under a new name (an older result's refit
    reads the files that result used)."""

    def __init__(self):
        self.folder: Path | None = None
        self._current: dict[str, tuple[tuple, Path]] = {}
        self._count = 0

    def path(self, role: str, node, work_root: str | None = None) -> Path:
        """The file holding ``node`` as the ``role`` ("fixed" or "moving") input, written if its state is new."""
        world = role == "fixed"
        state = mrml.volume_state(node, world)
        held = self._current.get(role)
        if held is not None and held[0] == state and held[1].exists():
            return held[1]
        if self.folder is None or not self.folder.exists():
            self.folder = Path(tempfile.mkdtemp(prefix="promptreg-inputs-", dir=work_root))
        self._count += 1
        path = self.folder / f"{role}-{self._count}.nrrd"
        (mrml.write_volume_world if world else mrml.write_volume)(node, path)
        self._current[role] = (state, path)
        return path

    def prune(self, keep) -> None:
        """Remove the exported files neither current nor in ``keep`` (paths the history's results still use)."""
        if self.folder is None or not self.folder.exists():
            return
        kept = {Path(p).resolve() for p in keep if p} | {path.resolve() for _, path in self._current.values()}
        for path in self.folder.glob("*.nrrd"):
            if path.resolve() not in kept:
                path.unlink(missing_ok=True)

    def clear(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder, self._current = None, {}


class Request:
    """One request to the worker and its answer (see the module doc). ``images``: the (fixed, moving) files it is
    about; ``folder``: its run folder (None for an encode)."""

    def __init__(self, session: "PanelSession", kind: str, request: dict, folder: Path | None = None,
                 images: tuple | None = None):
        self.session, self.kind, self.request = session, kind, request
        self.folder, self.images = folder, images
        self.id: int | None = None
        self.log_path: Path | None = None
        self.events: list[dict] = []     # arrived, not yet polled
        self.seen: list[dict] = []       # every event, in order
        self.finished = False
        self.result: dict | None = None  # the result (or encoded) event
        self.error: str | None = None
        self.cancelled = False           # the panel cancelled it
        self.affine_shown = False        # the panel shows its quick affine in the output transform node

    @property
    def answered_cancelled(self) -> bool:
        return self.finished and any(e["type"] == "error" and e.get("cancelled") for e in self.seen)

    @property
    def output_dir(self) -> Path | None:
        return self.folder / "output" if self.folder is not None else None

    def _arrived(self, event: dict) -> None:
        self.events.append(event)
        self.seen.append(event)
        if event["type"] in ("result", "encoded"):
            self.result = event
        elif event["type"] == "error":
            self.error = event.get("message") or "no message"

    def poll(self) -> list[dict]:
        """The events of this request that arrived since the last call; never blocks."""
        self.session.poll()
        new, self.events = self.events, []
        return new

    def wait(self, timeout: float | None = None) -> list[dict]:
        """Poll until answered (scripts and tests); every event of this request. Raises TimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            self.poll()
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.kind} unanswered after {timeout} s; see {self.log_path}")
            time.sleep(0.02)
        self.events = []
        return list(self.seen)

    def cancel(self) -> None:
        """Ask the worker to stop it; returns at once (the answer, an error with ``cancelled``, comes within about a
        second and removes the run folder)."""
        self.session.cancel(self)

    def join_cancel(self, timeout: float | None = None) -> bool:
        """Wait for the answer to a cancel (application exit); True once answered."""
        try:
            self.wait(timeout)
        except TimeoutError:
            return False
        return True

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path is not None and self.log_path.exists() else ""

    def cleanup(self) -> None:
        """Remove the run folder (the worker's log stays in its log folder)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


class PanelSession:
    """The worker of one scene and its requests (see the module doc). ``python``: the worker's Python."""

    def __init__(self, python: str | None = None, log_dir: str | None = None):
        self.python, self.log_dir = python, log_dir
        self.worker = None
        self.pending: dict[int, Request] = {}
        self.held: Request | None = None          # the request whose result the worker holds
        self.encoded: tuple | None = None         # the (fixed, moving) files the worker holds views of
        self.exits = 0                            # workers seen to end (killed, crashed)

    @property
    def running(self) -> bool:
        return self.worker is not None and self.worker.running

    def send(self, kind: str, fields: dict, folder: Path | None = None, images: tuple | None = None) -> Request:
        """Send a request (starting a worker when none runs); its handle. ``folder``: its run folder, the outputs
        going to ``folder/output``."""
        from PromptRegLib.apps.worker_client import WorkerSession  # installed beside the module; imports no torch

        self.poll()  # a worker that ended while idle is seen before the state is relied on
        if self.worker is None:
            self.worker = WorkerSession(python=self.python, log_dir=self.log_dir)
        if folder is not None:
            fields = {**fields, "output_dir": str(Path(folder) / "output")}
        request = Request(self, kind, {"request": kind, **fields}, folder, images)
        request.id = self.worker.request(kind, **fields)
        request.log_path = self.worker.log_path
        self.pending[request.id] = request
        return request

    def poll(self) -> None:
        """Hand the events that arrived to their requests; never blocks."""
        if self.worker is None:
            return
        for event in self.worker.poll():
            if event["type"] == "exit":  # whatever the worker held is gone (the next request starts a fresh one)
                self.held, self.encoded = None, None
                self.exits += 1
                continue
            request = self.pending.get(event.get("id"))
            if request is None:
                continue
            request._arrived(event)
            if event["type"] in FINAL:
                del self.pending[request.id]
                request.finished = True
                self._answered(request, event["type"] != "error")

    def _answered(self, request: Request, ok: bool) -> None:
        """What the worker holds once ``request`` is answered (answers come in the order the worker ran them)."""
        held_images = self.held.images if self.held is not None else None
        if request.kind == "encode":
            if request.images != held_images:
                self.held = None  # an encode of other images drops the old result
            if ok:
                self.encoded = request.images
            elif request.images != self.encoded:
                self.encoded = None  # it may have dropped the old views before it stopped
        elif request.kind == "register":
            self.held = request if ok else None
            if ok:
                self.encoded = request.images
            elif request.images != self.encoded:
                self.encoded = None
        elif request.kind in CHANGES and not request.request.get("pairs_from") and ok:
            self.held = request  # a change that fails or is cancelled leaves the held result as it was
        if not ok or request.cancelled:
            request.cleanup()  # nothing of it is loaded: no partial outputs left behind

    def _changes_state(self, request: Request) -> bool:
        if request.kind == "encode":
            return request.images != (self.held.images if self.held is not None else None)
        return request.kind in CHANGES and not request.request.get("pairs_from")

    def holds(self, result: Request | None) -> bool:
        """Whether the worker holds ``result`` and nothing sent may change that before a new request runs."""
        return (result is not None and self.held is result and self.running
                and not any(self._changes_state(r) for r in self.pending.values()))

    def has_images(self, images: tuple) -> bool:
        """Whether the worker holds, or is making, the views of ``images`` (an encode of them would add nothing)."""
        return (self.running and self.encoded == images) or any(
            r.kind in ("encode", "register") and r.images == images and not r.cancelled for r in self.pending.values())

    def busy(self) -> bool:
        return bool(self.pending)

    def cancel(self, request: Request) -> None:
        request.cancelled = True
        if request.finished:
            return
        if self.worker is not None:
            self.worker.cancel(request.id)

    def close(self, wait_s: float = 0.0) -> None:
        """End the worker (scene closed, module cleaned up); ``wait_s``: how long to wait for it to be gone. The
        requests not answered are dropped with their run folders."""
        worker, self.worker = self.worker, None
        for request in self.pending.values():
            request.cancelled = request.finished = True
            request.error = request.error or f"{request.kind} cancelled: the session was closed"
            request.cleanup()
        self.pending.clear()
        self.held, self.encoded = None, None
        if worker is not None:
            worker.close()
            if wait_s:
                worker.join_close(wait_s)


class EncodingState:
    """The background encoding's state as the panel's line under the status: which image, how many slices."""

    def __init__(self):
        self.role: str | None = None

    def text(self, event: dict) -> str | None:
        """The line for ``event`` of an encode request; None leaves the line as it is."""
        kind = event["type"]
        if kind == "encoded":
            return "Images encoded: a click now waits only for decoding"
        if kind == "error":
            if event.get("cancelled"):
                return "Encoding cancelled."
            lines = event.get("message", "").strip().splitlines()
            return f"Encoding failed: {lines[0] if lines else 'no message'}"
        if kind != "progress":
            return None
        stage = event.get("stage", "")
        role = re.fullmatch(r"encoding the (fixed|moving) image", stage)
        if role:
            self.role = role.group(1)
            return f"Encoding {self.role}…"
        if event.get("total"):
            return f"Encoding {self.role or 'the images'}: {event['done']}/{event['total']} {event.get('unit') or ''}".rstrip() + "…"
        if stage == "loading model":
            return "Encoding: loading the model…"
        return None
