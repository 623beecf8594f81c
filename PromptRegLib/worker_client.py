"""Starting and watching the worker from a GUI (or any caller) without blocking it.

``WorkerRun`` makes a fresh temporary folder (the caller may write inputs there), writes the request, starts ``python -m PromptRegLib.worker``
there, and collects its JSON lines on a reader thread; ``poll()`` returns the new events and never waits.
The outputs land in ``<temporary folder>/output`` and are only handed over in a final ``result`` event;
``cancel()`` terminates the process and removes the folder, so partial outputs are never seen.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path


class WorkerRun:
    def __init__(self, python: str | None = None, work_root: str | None = None):
        self.folder = Path(tempfile.mkdtemp(prefix="promptreg-run-", dir=work_root))
        self.request: dict = {}
        self.request_path = self.folder / "request.json"
        self.log_path = self.folder / "worker.log"
        self.python = python or sys.executable
        self.process: subprocess.Popen | None = None
        self.events: queue.Queue = queue.Queue()
        self.finished = False
        self.result: dict | None = None
        self.error: str | None = None

    def start(self, request: dict) -> "WorkerRun":
        """Write ``request`` (its inputs may already lie in :attr:`folder`) and start the worker."""
        self.request = {**request, "output_dir": str(self.folder / "output")}
        self.request_path.write_text(json.dumps(self.request, indent=2))
        environment = dict(os.environ)
        library_root = str(Path(__file__).resolve().parents[1])
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [library_root, environment.get("PYTHONPATH")]))
        log = open(self.log_path, "w")
        self.process = subprocess.Popen([self.python, "-m", "PromptRegLib.worker", str(self.request_path)],
                                        stdout=subprocess.PIPE, stderr=log, text=True, env=environment,
                                        cwd=str(self.folder))
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
        """Stop the worker (SIGTERM, then kill) and remove the run folder with anything it wrote."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.cleanup()

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
