"""Embedding cache: hits after the first encode, survives a corrupt file, never serves a changed image."""
import numpy as np
import torch

from PromptRegLib.models.cache import EmbeddingCache


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
