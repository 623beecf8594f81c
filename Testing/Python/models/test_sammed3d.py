"""SAM-Med3D model wrapper around medim's network: public layout, strict checkpoint loading, encode/decode, cache.

No real checkpoint exists here: checkpoint-shaped random state dicts stand in for it. The full network is
built once; encoding is tested on a one-block medim network (same code, 128³ input) to stay fast on CPU.
"""
from __future__ import annotations

import argparse
import shutil
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from PromptRegLib.errors import CheckpointError
from PromptRegLib.models import load_model
from PromptRegLib.models.cache import EmbeddingCache
from PromptRegLib.models.sammed3d import (
    CUBE_AXES_LPS,
    SAMMed3D,
    build_network,
    layout_problems,
    normalize_cube,
    read_state_dict,
)

# Names and shapes of the public "turbo" checkpoint (build_sam3D_vit_b_ori in uni-medical/SAM-Med3D).
PUBLIC_SHAPES = {
    "image_encoder.pos_embed": (1, 8, 8, 8, 768),
    "image_encoder.patch_embed.proj.weight": (768, 1, 16, 16, 16),
    "image_encoder.blocks.0.attn.qkv.weight": (2304, 768),
    "image_encoder.blocks.0.attn.rel_pos_d": (27, 64),     # window 14 → 2·14 − 1
    "image_encoder.blocks.2.attn.rel_pos_w": (15, 64),     # global on the 8³ grid → 2·8 − 1
    "image_encoder.neck.2.weight": (384, 384, 3, 3, 3),
    "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (3, 128),
    "prompt_encoder.mask_downscaling.6.weight": (384, 16, 1, 1, 1),
    "prompt_encoder.not_a_point_embed.weight": (1, 384),
    "mask_decoder.transformer.layers.1.cross_attn_token_to_image.q_proj.weight": (192, 384),
    "mask_decoder.mask_tokens.weight": (4, 384),
    "mask_decoder.output_upscaling.3.weight": (96, 48, 2, 2, 2),
    "mask_decoder.iou_prediction_head.layers.2.weight": (4, 256),
}


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network()


@pytest.fixture(scope="module")
def random_state(net) -> dict:
    """A checkpoint-shaped state dict with weights of its own (not the network's initialisation)."""
    generator = torch.Generator().manual_seed(1)
    return {k: 0.05 * torch.randn(v.shape, generator=generator) for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def checkpoints(random_state, tmp_path_factory) -> dict:
    """The same weights as a plain state dict and as a training checkpoint (how the public files are saved)."""
    folder = tmp_path_factory.mktemp("sammed3d")
    paths = {"plain": folder / "plain.pth", "wrapped": folder / "sam_med3d_turbo.pth"}
    torch.save(random_state, paths["plain"])
    torch.save({"model_state_dict": random_state, "epoch": 7, "args": argparse.Namespace(lr=8e-4)},
               paths["wrapped"])
    return paths


@pytest.fixture(scope="module")
def loaded(checkpoints) -> dict:
    """SAMMed3D loaded through the registry from each checkpoint file."""
    return {kind: load_model("sam-med3d", str(path), device="cpu", cache=EmbeddingCache(False))
            for kind, path in checkpoints.items()}


@pytest.fixture(scope="module")
def small_net() -> torch.nn.Module:
    """medim's SAM-Med3D with a single (global) encoder block: the same code paths, a fraction of the time."""
    from medim.models.sam_med3d import build_sam3D_vit_b_ori
    torch.manual_seed(2)
    return build_sam3D_vit_b_ori(pretrained=False, encoder_depth=1, encoder_global_attn_indexes=[0]).eval()


def reference_decode(network, features, points, labels):
    """The public inference's calls on the medim network (utils/infer_utils.py: zero 32³ mask, token 0)."""
    with torch.inference_mode():
        sparse, dense = network.prompt_encoder(points=[torch.tensor(points, dtype=torch.float32),
                                                       torch.tensor(labels, dtype=torch.int64)],
                                               boxes=None, masks=torch.zeros(len(points), 1, 32, 32, 32))
        low, iou = network.mask_decoder(image_embeddings=features[None], image_pe=network.prompt_encoder.get_dense_pe(),
                                        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)
        return F.interpolate(low, size=(128,) * 3, mode="trilinear", align_corners=False)[:, 0], iou[:, 0]


def test_medim_network_has_the_public_names_and_shapes(net):
    state = net.state_dict()
    for name, shape in PUBLIC_SHAPES.items():
        assert tuple(state[name].shape) == shape, name
    assert not any("pixel_mean" in k or "pixel_std" in k for k in state)  # not persistent in the public model
    assert sum(v.numel() for v in state.values()) == pytest.approx(100.5e6, rel=0.002)


@pytest.mark.parametrize("kind", ["plain", "wrapped"])
def test_checkpoint_loads_strictly_and_reproduces_the_network(kind, net, random_state, loaded):
    model = loaded[kind]
    state = model.net.state_dict()
    assert state.keys() == random_state.keys()
    assert all(torch.equal(state[k], v) for k, v in random_state.items())
    net.load_state_dict(random_state, strict=True)
    features = 0.1 * torch.randn(384, 8, 8, 8, generator=torch.Generator().manual_seed(3))
    points, labels = np.array([[[64.0, 60.0, 70.0], [20.0, 30.0, 40.0]], [[5.0, 100.0, 64.0], [64.0, 64.0, 64.0]]]), \
        np.array([[1, 0], [1, 1]])
    logits, iou = model.decode(features, points, labels)
    expected_logits, expected_iou = reference_decode(net, features, points, labels)
    assert logits.shape == (2, 128, 128, 128) and iou.shape == (2,)
    assert torch.allclose(logits, expected_logits, atol=1e-5)
    assert np.allclose(iou, expected_iou.numpy(), atol=1e-6)
    assert not torch.allclose(logits[0], logits[1])  # the prompt matters


def test_a_ddp_module_prefix_is_removed(tmp_path):
    state = {"module.image_encoder.pos_embed": torch.ones(2), "module.mask_decoder.iou_token.weight": torch.zeros(1)}
    torch.save({"model_state_dict": state}, tmp_path / "ddp.pth")
    assert set(read_state_dict(tmp_path / "ddp.pth")) == {"image_encoder.pos_embed", "mask_decoder.iou_token.weight"}


def test_layout_problems_name_missing_unexpected_and_reshaped_keys(net):
    expected = net.state_dict()
    found = {k: v for k, v in expected.items() if "neck.3" not in k}
    found["mask_decoder.extra"] = torch.zeros(1)
    found["mask_decoder.mask_tokens.weight"] = torch.zeros(3, 384)
    problems = "; ".join(layout_problems(expected, found))
    assert "2 missing (image_encoder.neck.3.weight, image_encoder.neck.3.bias)" in problems
    assert "1 unexpected (mask_decoder.extra)" in problems
    assert "1 of another shape (mask_decoder.mask_tokens.weight)" in problems
    assert layout_problems(expected, expected) == []


def test_wrong_files_give_a_checkpoint_error(tmp_path):
    torch.save({"model_state_dict": {"encoder.weight": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"does not match sam-med3d.*missing.*1 unexpected \(encoder.weight\)"):
        load_model("sam-med3d", str(tmp_path / "other.pth"), device="cpu")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(CheckpointError, match="cannot be read.*holds a Tensor, not a state dict"):
        load_model("sam-med3d", str(tmp_path / "tensor.pth"), device="cpu")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read as a SAM-Med3D checkpoint"):
        load_model("sam-med3d", str(tmp_path / "text.pth"), device="cpu")
    with pytest.raises(CheckpointError, match="not found.*sam_med3d_turbo.pth"):
        load_model("sam-med3d", str(tmp_path / "missing.pth"), device="cpu")
    with pytest.raises(CheckpointError, match="--checkpoint"):
        load_model("sam-med3d", None, device="cpu")


def test_missing_medim_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "medim.models.sam_med3d", None)
    with pytest.raises(CheckpointError, match="needs the authors' package medim.*--no-deps medim"):
        build_network()


def test_cache_key_follows_the_checkpoint_content_not_its_path(checkpoints, loaded, random_state, tmp_path):
    wrapped = loaded["wrapped"]
    shutil.copy(checkpoints["wrapped"], tmp_path / "renamed.pth")
    renamed = load_model("sam-med3d", str(tmp_path / "renamed.pth"), device="cpu", cache=EmbeddingCache(False))
    assert renamed.cache_tag == wrapped.cache_tag
    state = dict(random_state, **{"mask_decoder.iou_token.weight": random_state["mask_decoder.iou_token.weight"] + 1})
    torch.save({"model_state_dict": state}, tmp_path / "tuned.pth")
    tuned = load_model("sam-med3d", str(tmp_path / "tuned.pth"), device="cpu", cache=EmbeddingCache(False))
    assert tuned.cache_tag != wrapped.cache_tag
    assert wrapped.cache_tag.startswith("sam-med3d-pre1-")


def test_encode_is_the_network_on_the_normalised_cube_and_is_cached(small_net):
    cube = np.random.default_rng(4).normal(100.0, 30.0, (128,) * 3).astype(np.float32)
    cache = EmbeddingCache(False)
    model = SAMMed3D(None, device="cpu", cache=cache, net=small_net)
    calls = []
    hook = model.net.image_encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        features = model.encode(cube)
        again = model.encode(cube.copy())
    finally:
        hook.remove()
    assert features.shape == (384, 8, 8, 8) and features.dtype == torch.float32
    assert len(calls) == 1 and cache.hits == 1 and again is features
    with torch.inference_mode():
        expected = small_net.image_encoder(torch.from_numpy(normalize_cube(cube))[None, None])[0]
    assert torch.allclose(features, expected, atol=1e-6)
    with pytest.raises(ValueError, match="128³ cubes"):
        model.encode(cube[:64])

    other_weights = SAMMed3D(None, device="cpu", cache=cache, net=small_net_with_other_weights(small_net))
    assert other_weights.cache_tag != model.cache_tag
    assert not torch.allclose(other_weights.encode(cube), features)
    assert cache.misses == 2


def small_net_with_other_weights(small_net):
    from medim.models.sam_med3d import build_sam3D_vit_b_ori
    torch.manual_seed(5)
    other = build_sam3D_vit_b_ori(pretrained=False, encoder_depth=1, encoder_global_attn_indexes=[0]).eval()
    assert other.state_dict().keys() == small_net.state_dict().keys()
    return other


def test_decode_refines_a_previous_mask_and_keeps_shapes(small_net):
    model = SAMMed3D(None, device="cpu", cache=EmbeddingCache(False), net=small_net)
    features = 0.1 * torch.randn(384, 8, 8, 8, generator=torch.Generator().manual_seed(6))
    points, labels = np.array([[[30.0, 64.0, 90.0]]]), np.ones((1, 1))
    first, iou = model.decode(features, points, labels)
    refined, _ = model.decode(features, points, labels, previous_logits=first)
    assert first.shape == refined.shape == (1, 128, 128, 128) and iou.shape == (1,)
    assert not torch.allclose(first, refined)  # the previous mask is an input


def test_cube_axes_are_ras_in_lps_terms():
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    assert np.array_equal(lps_to_ras @ CUBE_AXES_LPS, np.eye(3))  # axis 0 → R, 1 → A, 2 → S
    assert np.isclose(np.linalg.det(CUBE_AXES_LPS), 1.0)
