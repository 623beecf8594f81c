"""Starting and watching the worker from a GUI (or any caller) without blocking it.

``WorkerRun`` makes a fresh temporary folder (the caller may write inputs there), writes the request, starts
``python -m PromptRegLib.apps.worker`` there, and collects its JSON lines on a reader thread; ``poll()`` returns
the new events and never waits. The outputs land in ``<temporary folder>/output`` and are only handed over
in a final ``result`` event. ``cancel()`` returns at once: the worker's whole process group (the
``PythonSlicer`` launcher and the Python it starts) gets SIGTERM, then SIGKILL after a short grace, and
the folder is removed once they are gone, so partial outputs are never seen. The worker's log is kept
outside the folder (a few recent ones), so an error message can point to a file that still exists.
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


def _new_session_options() -> dict:
    """Popen options that give the worker its own process group and, on Windows, no console window."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
    return {"start_new_session": True}


def _group_alive(group: int) -> bool:
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
        if not _group_alive(group):
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
        library_root = str(Path(__file__).resolve().parents[1])
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
