"""Starting and watching the worker from a GUI (or any caller) without blocking it.

``WorkerRun`` makes a fresh temporary folder (the caller may write inputs there), writes the request, starts
``python -m PromptRegLib.apps.worker`` there, and collects its JSON lines on a reader thread; ``poll()`` returns
the new events and never waits. The outputs land in ``<temporary folder>/output`` and are only handed over
in a final ``result`` event. ``cancel()`` returns at once: the worker's whole process group (the
``PythonSlicer`` launcher and the Python it starts) gets SIGTERM, then SIGKILL after a short grace, and
the folder is removed once they are gone, so partial outputs are never seen. The worker's log is kept
outside the folder (a few recent ones), so an error message can point to a file that still exists.

``WorkerSession`` keeps one long-lived worker (``python -m PromptRegLib.apps.worker --serve``) for a Slicer session:
the model, both volumes' embeddings and the last result stay in its memory between requests (encode early,
register, add a click, correct a Prompt Y, reject and refit). ``request(kind, **fields)`` returns the request's id at
once; ``poll()`` returns the events that arrived (each with the id it answers) and never waits; ``cancel(id)`` asks
the worker to stop that request (it answers an error with ``"cancelled": true`` within about a second; one that does
not answer within :data:`CANCEL_KILL_S` is stopped by ending the process). A worker that dies (killed, crashed) is
replaced by a fresh one at the next request, and every request it had not answered gets one error event naming its
log. ``close()`` ends it (so does the end of Slicer: the worker exits when its stdin closes). This module imports no
torch: it runs in Slicer's GUI process.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

#: how long a cancelled worker may take to stop cleanly before its process group is killed
CANCEL_GRACE_S = 1.0
#: worker logs kept in the log folder (older ones are removed when a run starts)
KEPT_LOGS = 20


def default_log_dir() -> Path:
    return Path(tempfile.gettempdir()) / "promptreg-logs"


def _prune_logs(log_dir: Path, keep: int) -> None:
    logs = sorted(log_dir.glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in logs[keep:]:
        old.unlink(missing_ok=True)


def _library_root() -> Path:
    """The folder holding the ``PromptRegLib`` package, for the worker's PYTHONPATH."""
    return Path(__file__).resolve().parents[2]


def _new_session_options() -> dict:
    """Popen options that give the worker its own process group and, on Windows, no console window."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
    return {"start_new_session": True}


def group_alive(group: int) -> bool:
    """Whether any process of process group ``group`` still runs (POSIX)."""
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False


def kill_process_tree(process: subprocess.Popen, grace_s: float = CANCEL_GRACE_S) -> None:
    """Stop ``process`` and everything it started (blocks up to ``grace_s`` and a moment: call it off the GUI).

    POSIX: SIGTERM to its process group (the worker stops cleanly), SIGKILL to whatever is left of the group
    after ``grace_s``. Windows: ``taskkill /T /F`` on the tree.
    """
    if sys.platform == "win32":
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(process.pid)], capture_output=True,
                       creationflags=subprocess.CREATE_NO_WINDOW)
        process.wait()
        return
    group = process.pid  # start_new_session: the group id is the worker's pid
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        process.wait()
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        process.poll()  # reap the launcher, or it lingers in the group as a zombie
        if not group_alive(group):
            break
        time.sleep(0.05)
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


class WorkerRun:
    def __init__(self, python: str | None = None, work_root: str | None = None, log_dir: str | None = None):
        self.folder = Path(tempfile.mkdtemp(prefix="promptreg-run-", dir=work_root))
        self.request: dict = {}
        self.request_path = self.folder / "request.json"
        log_folder = Path(log_dir) if log_dir else default_log_dir()
        log_folder.mkdir(parents=True, exist_ok=True)
        _prune_logs(log_folder, KEPT_LOGS - 1)
        self.log_path = log_folder / f"{self.folder.name}.log"
        self.python = python or sys.executable
        self.process: subprocess.Popen | None = None
        self.events: queue.Queue = queue.Queue()
        self.finished = False
        self.result: dict | None = None
        self.error: str | None = None
        self._stopper: threading.Thread | None = None

    def start(self, request: dict) -> "WorkerRun":
        """Write ``request`` (its inputs may already lie in :attr:`folder`) and start the worker."""
        self.request = {**request, "output_dir": str(self.folder / "output")}
        self.request_path.write_text(json.dumps(self.request, indent=2))
        environment = dict(os.environ)
        library_root = str(_library_root())
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [library_root, environment.get("PYTHONPATH")]))
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen([self.python, "-m", "PromptRegLib.apps.worker", str(self.request_path)],
                                            stdout=subprocess.PIPE, stderr=log, text=True, env=environment,
                                            cwd=str(self.folder), **_new_session_options())
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self.events.put(json.loads(line))
            except json.JSONDecodeError:
                self.events.put({"type": "message", "text": line.rstrip()})
        self.events.put({"type": "exit", "code": self.process.wait()})

    def poll(self) -> list[dict]:
        """New events since the last call (progress, result, error; a final exit); never blocks."""
        new = []
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return new
            if event["type"] == "result":
                self.result = event
            elif event["type"] == "error":
                self.error = event["message"]
            elif event["type"] == "exit":
                self.finished = True
                if event["code"] != 0 and self.error is None:
                    self.error = (f"the worker stopped unexpectedly (exit code {event['code']}); "
                                  f"see its log: {self.log_path}")
                    new.append({"type": "error", "message": self.error})
            new.append(event)

    def wait(self, timeout: float | None = None) -> list[dict]:
        """Block until the worker ends (for scripts and tests); returns all events."""
        assert self.process is not None
        self.process.wait(timeout)
        events = []
        while not self.finished:
            events += self.poll()
        return events

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def cancel(self) -> None:
        """Stop the worker's whole process tree and remove the run folder, without blocking the caller:
        the stopping happens on a background thread (see :meth:`join_cancel`)."""
        if self.process is None or self.process.poll() is not None:
            self.cleanup()
            return

        def stop() -> None:
            kill_process_tree(self.process)
            self.cleanup()

        self._stopper = threading.Thread(target=stop, daemon=True)
        self._stopper.start()

    def join_cancel(self, timeout: float | None = None) -> bool:
        """Wait for a cancel to finish (scripts, tests, application exit); True when it has."""
        if self._stopper is not None:
            self._stopper.join(timeout)
            return not self._stopper.is_alive()
        return True

    def cleanup(self) -> None:
        """Remove the run folder (inputs and outputs); the log stays in the log folder."""
        shutil.rmtree(self.folder, ignore_errors=True)


#: a request cancelled this long ago and still unanswered is stopped by ending the worker (state lost, answered)
CANCEL_KILL_S = 10.0
#: how long a closing worker may take to exit on its own before its process group is killed
CLOSE_GRACE_S = 2.0
#: events that end a request (the others — progress, affine — report on it)
FINAL_EVENTS = ("result", "encoded", "error")


class WorkerSession:
    """One long-lived worker process and its requests (see the module doc); never blocks its caller but in
    :meth:`wait` and :meth:`join_close`, which are for scripts and tests."""

    def __init__(self, python: str | None = None, log_dir: str | None = None):
        self.python = python or sys.executable
        self.log_folder = Path(log_dir) if log_dir else default_log_dir()
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.events: queue.Queue = queue.Queue()
        self.pending: dict[int, int] = {}           # request id → the worker generation it was sent to
        self.kinds: dict[int, str] = {}
        self._cancelled_at: dict[int, float] = {}
        self._killed: set[int] = set()               # generations ended by a cancel that was not answered
        self._quiet: set[int] = set()                # the session's own requests (cancel): their answers not shown
        self._generation = 0
        self._next_id = 0
        self._lock = threading.Lock()
        self._stopper: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> "WorkerSession":
        """Start the worker unless it runs (its own process group, library on PYTHONPATH, stderr to a fresh log)."""
        with self._lock:
            if self.running:
                return self
            self.log_folder.mkdir(parents=True, exist_ok=True)
            _prune_logs(self.log_folder, KEPT_LOGS - 1)
            handle, log_name = tempfile.mkstemp(prefix="promptreg-session-", suffix=".log", dir=self.log_folder)
            os.close(handle)
            self.log_path = Path(log_name)
            environment = dict(os.environ)
            library_root = str(_library_root())
            environment["PYTHONPATH"] = os.pathsep.join(filter(None, [library_root, environment.get("PYTHONPATH")]))
            self._generation += 1
            with open(self.log_path, "w") as log:
                self.process = subprocess.Popen([self.python, "-m", "PromptRegLib.apps.worker", "--serve"],
                                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                                env=environment, bufsize=1, **_new_session_options())
            threading.Thread(target=self._read, args=(self.process, self._generation, self.log_path),
                             daemon=True).start()
        return self

    def _read(self, process: subprocess.Popen, generation: int, log_path: Path) -> None:
        for line in process.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"type": "message", "text": line.rstrip()}
            self.events.put((generation, event))
        self.events.put((generation, {"type": "exit", "code": process.wait(), "log": str(log_path)}))

    def request(self, kind: str, **fields) -> int:
        """Send a request (``encode``, ``register``, ``add_click``, ``correct``, ``refit``, ``forget``; see
        :mod:`PromptRegLib.apps.worker`); returns its id. Starts a worker first when none runs."""
        self._next_id += 1
        request_id = self._next_id
        self.kinds[request_id] = kind
        self._send({**fields, "id": request_id, "request": kind}, request_id)
        return request_id

    def _send(self, message: dict, request_id: int) -> None:
        """Write one request line; to a fresh worker when the one there died since the last look."""
        line = json.dumps(message) + "\n"
        for _ in range(2):
            self.start()
            process = self.process
            self.pending[request_id] = self._generation
            try:
                process.stdin.write(line)
                process.stdin.flush()
                return
            except (BrokenPipeError, OSError, ValueError):
                self.pending.pop(request_id, None)
                process.wait()
        raise RuntimeError(f"the worker does not start; see its log: {self.log_path}")

    def cancel(self, request_id: int | None = None) -> None:
        """Ask the worker to stop request ``request_id`` (None: all); returns at once."""
        if not self.running:
            return
        targets = [request_id] if request_id is not None else list(self.pending)
        now = time.monotonic()
        for target in targets:
            if target in self.pending:
                self._cancelled_at.setdefault(target, now)
        self._next_id += 1
        self._quiet.add(self._next_id)
        self._send({"id": self._next_id, "request": "cancel", "target": request_id}, self._next_id)

    def poll(self) -> list[dict]:
        """The events that arrived since the last call; never blocks. A request left unanswered by a worker that
        died gets one error; a cancel unanswered for :data:`CANCEL_KILL_S` ends the worker."""
        new = []
        while True:
            try:
                generation, event = self.events.get_nowait()
            except queue.Empty:
                break
            if event["type"] == "exit":
                new += self._ended(generation, event)
                continue
            if event["type"] in FINAL_EVENTS and event.get("id") in self.pending:
                self.pending.pop(event["id"])
                self._cancelled_at.pop(event["id"], None)
            if event.get("id") not in self._quiet:
                new.append(event)
        self._stop_unanswered_cancels()
        return new

    def _ended(self, generation: int, exit_event: dict) -> list[dict]:
        """One error for each request the ended worker ``generation`` had not answered, then the exit event."""
        new = []
        for request_id in [r for r, g in self.pending.items() if g == generation]:
            self.pending.pop(request_id)
            if request_id in self._quiet:
                continue
            if self._cancelled_at.pop(request_id, None) is not None and generation in self._killed:
                new.append({"id": request_id, "type": "error", "request": self.kinds.get(request_id),
                            "message": f"{self.kinds.get(request_id)} cancelled", "cancelled": True,
                            "exit_code": 130})
            else:
                new.append({"id": request_id, "type": "error", "request": self.kinds.get(request_id),
                            "message": f"the worker stopped unexpectedly (exit code {exit_event['code']}); "
                                       f"see its log: {exit_event['log']}", "exit_code": 1})
        if generation == self._generation and self.process is not None and self.process.poll() is not None:
            self.process = None  # the next request starts a fresh worker
        return new + [exit_event]

    def _stop_unanswered_cancels(self) -> None:
        late = [r for r, at in self._cancelled_at.items() if time.monotonic() - at > CANCEL_KILL_S]
        if late and self.running and self._generation not in self._killed:
            self._killed.add(self._generation)
            process = self.process
            threading.Thread(target=kill_process_tree, args=(process,), daemon=True).start()

    def wait(self, request_id: int, timeout: float | None = None) -> list[dict]:
        """Poll until request ``request_id`` is answered (for scripts and tests); every event polled meanwhile, in
        order. Raises TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        events = []
        while True:
            batch = self.poll()
            events += batch
            if any(e.get("id") == request_id and e["type"] in FINAL_EVENTS for e in batch):
                return events
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"request {request_id} unanswered after {timeout} s")
            time.sleep(0.02)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path is not None and self.log_path.exists() else ""

    def close(self) -> None:
        """End the worker (with the scene or the module) without blocking: it is asked to shut down, its stdin
        closed, and its process group killed if it has not exited within :data:`CLOSE_GRACE_S`."""
        process, self.process = self.process, None
        self.pending.clear()
        if process is None or process.poll() is not None:
            return
        try:
            process.stdin.write(json.dumps({"id": 0, "request": "shutdown"}) + "\n")
            process.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass

        def stop() -> None:
            try:
                process.wait(CLOSE_GRACE_S)
            except subprocess.TimeoutExpired:
                kill_process_tree(process)

        self._stopper = threading.Thread(target=stop, daemon=True)
        self._stopper.start()

    def join_close(self, timeout: float | None = None) -> bool:
        """Wait for :meth:`close` to finish (scripts, tests, application exit); True when the worker is gone."""
        if self._stopper is not None:
            self._stopper.join(timeout)
            return not self._stopper.is_alive()
        return True
