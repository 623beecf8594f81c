"""Embedding cache: in memory (bounded) and on disk, keyed by the exact model input and model tag.

The key is a hash of the preprocessed input itself, so a changed image, window or model can never hit a
stale entry. Disk writes go to a temporary file renamed into place, so two runs on the same volumes
cannot corrupt each other; an unreadable entry is treated as missing and rewritten.
"""
from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch


def default_cache_dir() -> Path | None:
    """``$PROMPTREG_CACHE`` (``off`` disables the disk cache), else ``~/.cache/promptreg``."""
    value = os.environ.get("PROMPTREG_CACHE")
    if value == "off":
        return None
    return Path(value) if value else Path.home() / ".cache" / "promptreg"


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's content (hex, first 16 characters), remembered per (path, size, mtime).

    Part of every cache key of a model loaded from a checkpoint, so fine-tuned weights never get another
    model's cached features.
    """
    stat = Path(path).stat()
    return _file_digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


class EmbeddingCache:
    def __init__(self, directory: str | os.PathLike | None | bool = True, max_memory_mb: int = 1024):
        if directory is True:
            directory = default_cache_dir()
        self.directory = Path(directory) if directory else None
        self.max_memory_bytes = max_memory_mb * 1024 * 1024
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._memory_bytes = 0
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / key[:2] / f"{key}.pt"

    def get(self, key: str) -> torch.Tensor | None:
        if key in self._memory:
            self._memory.move_to_end(key)
            self.hits += 1
            return self._memory[key]
        if self.directory is not None and self._path(key).is_file():
            try:
                tensor = torch.load(self._path(key), map_location="cpu", weights_only=True)
            except Exception:  # truncated or foreign file: recompute and overwrite
                tensor = None
            if isinstance(tensor, torch.Tensor):
                self.hits += 1
                self._remember(key, tensor)
                return tensor
        self.misses += 1
        return None

    def put(self, key: str, tensor: torch.Tensor) -> None:
        self._remember(key, tensor)
        if self.directory is None:
            return
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            os.close(handle)
            torch.save(tensor.contiguous(), temporary)
            os.replace(temporary, path)
        except OSError:  # a read-only or full cache disk only costs speed
            try:
                os.unlink(temporary)
            except (OSError, UnboundLocalError):
                pass

    def _remember(self, key: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if size > self.max_memory_bytes:
            return
        self._memory[key] = tensor
        self._memory_bytes += size
        while self._memory_bytes > self.max_memory_bytes:
            _, old = self._memory.popitem(last=False)
            self._memory_bytes -= old.numel() * old.element_size()
