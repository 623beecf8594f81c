"""Embedding cache: hits after the first encode, survives a corrupt file, never serves a changed image or other
weights' features, keeps its disk cap by evicting the least recently used, and can be emptied."""
import hashlib
import shutil

import numpy as np
import torch

from PromptRegLib.models.cache import EmbeddingCache
from PromptRegLib.models.litemedsam import LiteMedSAM


def test_second_encode_is_a_cache_hit_and_identical(model, tmp_path):
    from PromptRegLib.models import load_model

    fresh = load_model("litemedsam", device="cpu", cache=EmbeddingCache(tmp_path))
    slice_01 = np.random.default_rng(1).random((64, 80)).astype(np.float32)
    first = fresh.encode([slice_01], (1.0, 1.0))[0]
    assert fresh.cache.misses == 1 and fresh.cache.hits == 0
    again = load_model("litemedsam", device="cpu", cache=EmbeddingCache(tmp_path))  # new process, same disk
    second = again.encode([slice_01], (1.0, 1.0))[0]
    assert again.cache.hits == 1 and again.cache.misses == 0
    assert torch.equal(first.features, second.features)
    changed = slice_01.copy()
    changed[10, 10] += 0.5
    again.encode([changed], (1.0, 1.0))
    assert again.cache.misses == 1


def test_corrupt_cache_entry_is_recomputed(tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.put("ab" * 20, torch.ones(3))
    path = next(tmp_path.rglob("*.pt"))
    path.write_bytes(b"truncated")
    fresh = EmbeddingCache(tmp_path)
    assert fresh.get("ab" * 20) is None
    fresh.put("ab" * 20, torch.zeros(3))
    assert torch.equal(EmbeddingCache(tmp_path).get("ab" * 20), torch.zeros(3))
    assert not list(tmp_path.rglob("*.tmp"))


def test_checkpoint_content_is_part_of_the_key(tmp_path, monkeypatch):
    """Other weights (even under the same file name) never get cached features; a copy of the same weights does."""
    monkeypatch.setenv("PROMPTREG_ENCODER_RUNTIME", "torch")  # no export of the altered weights needed here
    shipped = LiteMedSAM(device="cpu", cache=EmbeddingCache(tmp_path / "cache"))
    (tmp_path / "same").mkdir()
    shutil.copyfile(shipped.checkpoint, tmp_path / "same" / "lite_medsam.pth")
    state = torch.load(shipped.checkpoint, map_location="cpu", weights_only=True)
    state["image_encoder.neck.0.weight"] = state["image_encoder.neck.0.weight"] * 1.01
    torch.save(state, tmp_path / "lite_medsam.pth")
    slice_01 = np.random.default_rng(2).random((32, 32)).astype(np.float32)
    shipped.encode([slice_01], (1.0, 1.0))
    tuned = LiteMedSAM(str(tmp_path / "lite_medsam.pth"), "cpu", EmbeddingCache(tmp_path / "cache"))
    tuned.encode([slice_01], (1.0, 1.0))
    assert tuned.cache_tag != shipped.cache_tag and (tuned.cache.hits, tuned.cache.misses) == (0, 1)
    copy = LiteMedSAM(str(tmp_path / "same" / "lite_medsam.pth"), "cpu", EmbeddingCache(tmp_path / "cache"))
    copy.encode([slice_01], (1.0, 1.0))
    assert copy.cache_tag == shipped.cache_tag and (copy.cache.hits, copy.cache.misses) == (1, 0)


def _keys(count: int) -> list[str]:
    """Sorted, so entries written within one clock tick would also tie-break oldest-first by name."""
    return sorted(hashlib.sha1(str(i).encode()).hexdigest() for i in range(count))


def test_disk_cap_evicts_the_least_recently_used(tmp_path):
    probe = EmbeddingCache(tmp_path / "probe")
    probe.put(_keys(1)[0], torch.zeros(1000))
    entry_bytes = next((tmp_path / "probe").rglob("*.pt")).stat().st_size
    cap_bytes = 3.5 * entry_bytes
    first, second, third, fourth = _keys(4)
    cache = EmbeddingCache(tmp_path / "cache", max_disk_mb=cap_bytes / 2**20)
    for key in (first, second, third):
        cache.put(key, torch.full((1000,), float(int(key[:4], 16))))
    assert EmbeddingCache(tmp_path / "cache").get(first) is not None  # read from disk (another run): now the newest
    cache.put(fourth, torch.zeros(1000))
    kept = {path.stem for path in (tmp_path / "cache").rglob("*.pt")}
    assert kept == {first, third, fourth}
    assert cache.info()["bytes"] <= cap_bytes and cache.info()["entries"] == 3


def test_clear_empties_memory_and_disk(tmp_path):
    cache = EmbeddingCache(tmp_path)
    for key in _keys(3):
        cache.put(key, torch.ones(10))
    assert cache.info()["entries"] == 3
    assert cache.clear() > 0
    assert cache.info() == {"directory": str(tmp_path), "entries": 0, "bytes": 0, "max_bytes": cache.max_disk_bytes}
    assert cache.get(_keys(1)[0]) is None and not list(tmp_path.iterdir())


def test_cache_command_tells_and_clears(tmp_path, monkeypatch, capsys):
    from PromptRegLib.apps.cli import main

    monkeypatch.setenv("PROMPTREG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PROMPTREG_EXPORTS", str(tmp_path / "exported"))
    monkeypatch.setenv("PROMPTREG_CACHE_MAX_MB", "100")
    EmbeddingCache().put(_keys(1)[0], torch.ones(1000))
    assert main(["cache", "--info"]) == 0
    assert "1 embeddings" in capsys.readouterr().out
    assert main(["cache", "--clear"]) == 0
    assert "0 embeddings" in capsys.readouterr().out
    assert EmbeddingCache().info()["entries"] == 0
