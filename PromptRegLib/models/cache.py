"""Embedding cache: in memory (bounded) and on disk (size-capped, least recently used evicted).

The key is a hash of the preprocessed input itself and of the model's tag (name, preprocessing version,
checkpoint content digest, numeric precision), so a changed image, window, model or weights can never hit
a stale entry. Disk writes go to a temporary file renamed into place, so two runs on the same volumes
cannot corrupt each other; an unreadable entry is treated as missing and rewritten.

Disk entries live in ``DIRECTORY/xx/KEY.pt``. Each read touches the file's modification time, so the
disk cap (``$PROMPTREG_CACHE_MAX_MB``, default 4096) evicts the least recently used entries first. To
empty it: ``promptreg cache --clear`` or :meth:`EmbeddingCache.clear`; ``promptreg cache --info`` tells
its place and size.
"""
from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import torch

from ..errors import PromptRegError

DEFAULT_DISK_CAP_MB = 4096
_ENTRY_GLOB = "[0-9a-f][0-9a-f]/*.pt"


def default_cache_dir() -> Path | None:
    """``$PROMPTREG_CACHE`` (``off`` disables the disk cache), else ``~/.cache/promptreg``."""
    value = os.environ.get("PROMPTREG_CACHE")
    if value == "off":
        return None
    return Path(value) if value else Path.home() / ".cache" / "promptreg"


def default_disk_cap_mb() -> float:
    """``$PROMPTREG_CACHE_MAX_MB`` (megabytes of disk the embedding cache may hold), else 4096."""
    value = os.environ.get("PROMPTREG_CACHE_MAX_MB")
    try:
        return float(value) if value else DEFAULT_DISK_CAP_MB
    except ValueError:
        raise PromptRegError(f"PROMPTREG_CACHE_MAX_MB={value!r} is not a number of megabytes; unset it for the "
                             f"default ({DEFAULT_DISK_CAP_MB} MB).") from None


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
    """Features by key: the most recent in memory (``max_memory_mb``), all on disk up to ``max_disk_mb``.

    ``directory`` True: :func:`default_cache_dir`; None/False: memory only. ``max_disk_mb`` None:
    :func:`default_disk_cap_mb`.
    """

    def __init__(self, directory: str | os.PathLike | None | bool = True, max_memory_mb: int = 1024,
                 max_disk_mb: float | None = None):
        if directory is True:
            directory = default_cache_dir()
        self.directory = Path(directory) if directory else None
        self.max_memory_bytes = max_memory_mb * 1024 * 1024
        self.max_disk_bytes = int((default_disk_cap_mb() if max_disk_mb is None else max_disk_mb) * 1024 * 1024)
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._memory_bytes = 0
        self._disk_bytes: int | None = None  # this process's running estimate; re-measured before evicting
        self._last_touch_ns = 0
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / key[:2] / f"{key}.pt"

    def get(self, key: str) -> torch.Tensor | None:
        if key in self._memory:
            self._memory.move_to_end(key)
            self.hits += 1
            self._touch(key)
            return self._memory[key]
        if self.directory is not None and self._path(key).is_file():
            try:
                tensor = torch.load(self._path(key), map_location="cpu", weights_only=True)
            except Exception:  # truncated or foreign file: recompute and overwrite
                tensor = None
            if isinstance(tensor, torch.Tensor):
                self.hits += 1
                self._touch(key)
                self._remember(key, tensor)
                return tensor
        self.misses += 1
        return None

    def put(self, key: str, tensor: torch.Tensor) -> None:
        self._remember(key, tensor)
        if self.directory is None:
            return
        path = self._path(key)
        temporary = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            os.close(handle)
            torch.save(tensor.contiguous(), temporary)
            os.replace(temporary, path)
            self._touch(key)
            self._disk_bytes = self._measure_disk() if self._disk_bytes is None else \
                self._disk_bytes + path.stat().st_size
        except OSError:  # a read-only or full cache disk only costs speed
            if temporary is not None and os.path.exists(temporary):
                os.unlink(temporary)
            return
        if self._disk_bytes > self.max_disk_bytes:
            self._evict()

    def clear(self) -> int:
        """Forget every entry, in memory and on disk (with leftover temporary files); returns bytes freed on disk."""
        self._memory.clear()
        self._memory_bytes = 0
        freed = 0
        if self.directory is not None and self.directory.is_dir():
            for path in [*self.directory.glob(_ENTRY_GLOB), *self.directory.glob("[0-9a-f][0-9a-f]/*.tmp")]:
                freed += _unlink(path)
            for folder in self.directory.glob("[0-9a-f][0-9a-f]"):
                try:
                    folder.rmdir()
                except OSError:  # not empty: another run wrote meanwhile
                    pass
        self._disk_bytes = 0
        return freed

    def info(self) -> dict:
        """Where the disk cache is, how many entries and bytes it holds, and its cap."""
        entries = list(self.directory.glob(_ENTRY_GLOB)) if self.directory is not None else []
        return {"directory": str(self.directory) if self.directory else None, "entries": len(entries),
                "bytes": sum(_size(p) for p in entries), "max_bytes": self.max_disk_bytes}

    def _touch(self, key: str) -> None:
        """Mark an entry as just used (its modification time, strictly increasing within this process)."""
        if self.directory is None:
            return
        self._last_touch_ns = max(time.time_ns(), self._last_touch_ns + 1)
        try:
            os.utime(self._path(key), ns=(self._last_touch_ns, self._last_touch_ns))
        except OSError:  # evicted by another run, or a read-only disk
            pass

    def _measure_disk(self) -> int:
        return sum(_size(p) for p in self.directory.glob(_ENTRY_GLOB))

    def _evict(self) -> None:
        """Delete the least recently used disk entries until the cache fits its cap.

        Counted afresh: other runs write to the same folder.
        """
        entries = []
        for path in self.directory.glob(_ENTRY_GLOB):
            try:
                stat = path.stat()
            except OSError:
                continue
            entries.append((stat.st_mtime_ns, stat.st_size, path))
        entries.sort()
        total = sum(size for _, size, _ in entries)
        for _, size, path in entries:
            if total <= self.max_disk_bytes:
                break
            _unlink(path)
            total -= size
        self._disk_bytes = total

    def _remember(self, key: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if size > self.max_memory_bytes:
            return
        if key in self._memory:
            old = self._memory.pop(key)
            self._memory_bytes -= old.numel() * old.element_size()
        self._memory[key] = tensor
        self._memory_bytes += size
        while self._memory_bytes > self.max_memory_bytes:
            _, old = self._memory.popitem(last=False)
            self._memory_bytes -= old.numel() * old.element_size()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _unlink(path: Path) -> int:
    """Delete a file; its size in bytes, or 0 where it was already gone."""
    size = _size(path)
    try:
        path.unlink()
    except OSError:
        return 0
    return size


def describe_disk_caches(clear: bool = False) -> list[str]:
    """Where the embedding cache and the exported networks are, and their size; ``clear`` empties both first."""
    from .openvino_runtime import clear_exports, export_dir, exported_bytes

    cache = EmbeddingCache()
    lines = []
    if clear:
        lines.append(f"removed {(cache.clear() + clear_exports()) / 2**20:.1f} MB")
    info = cache.info()
    if info["directory"] is None:
        lines.append("embedding cache: off (PROMPTREG_CACHE=off)")
    else:
        lines.append(f"embedding cache: {info['directory']}: {info['entries']} embeddings, "
                     f"{info['bytes'] / 2**20:.1f} MB of {info['max_bytes'] / 2**20:.0f} MB (PROMPTREG_CACHE_MAX_MB)")
    exports = export_dir() or "off (PROMPTREG_EXPORTS=off)"
    lines.append(f"exported networks: {exports}: {exported_bytes() / 2**20:.1f} MB")
    return lines
