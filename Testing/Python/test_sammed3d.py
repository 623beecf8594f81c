"""SAM-Med3D backend: public parameter layout, strict checkpoint round trip, formulas, cube mapping, 3D path.

No real checkpoint exists here: the network runs with random weights; what is checked is that it has the
public shapes and names, that a checkpoint in that layout loads strictly and reproduces the network, and
that prompts and masks map exactly between images and cubes.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from PromptRegLib.cli import main
from PromptRegLib.cube import CubeCrop
from PromptRegLib.errors import Cancelled, CheckpointError, InputImageError, PromptError
from PromptRegLib.imageio import Image
from PromptRegLib.models import load_model
from PromptRegLib.models.cache import EmbeddingCache
from PromptRegLib.models.sammed3d_net import EncoderAttention, EncoderBlock, SAMMed3DNet
from PromptRegLib.native3d import CubeView, cube_similarity, refine_peak, segment_point
from PromptRegLib.registration import register
from PromptRegLib.volume import SliceStack

# Shapes read from the public model definition (build_sam3D_vit_b_ori, the "turbo" checkpoint's layout).
PUBLIC_SHAPES = {
    "image_encoder.pos_embed": (1, 8, 8, 8, 768),
    "image_encoder.patch_embed.proj.weight": (768, 1, 16, 16, 16),
    "image_encoder.blocks.0.attn.qkv.weight": (2304, 768),
    "image_encoder.blocks.0.attn.rel_pos_d": (27, 64),     # window 14 → 2·14 − 1
    "image_encoder.blocks.2.attn.rel_pos_w": (15, 64),     # global on the 8³ grid → 2·8 − 1
    "image_encoder.blocks.11.mlp.lin1.weight": (3072, 768),
    "image_encoder.neck.0.weight": (384, 768, 1, 1, 1),
    "image_encoder.neck.2.weight": (384, 384, 3, 3, 3),
    "image_encoder.neck.3.bias": (384,),
    "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (3, 128),
    "prompt_encoder.point_embeddings.1.weight": (1, 384),
    "prompt_encoder.not_a_point_embed.weight": (1, 384),
    "prompt_encoder.mask_downscaling.0.weight": (4, 1, 2, 2, 2),
    "prompt_encoder.mask_downscaling.6.weight": (384, 16, 1, 1, 1),
    "prompt_encoder.no_mask_embed.weight": (1, 384),
    "mask_decoder.transformer.layers.1.cross_attn_token_to_image.q_proj.weight": (192, 384),
    "mask_decoder.transformer.layers.0.mlp.lin1.weight": (2048, 384),
    "mask_decoder.transformer.final_attn_token_to_image.out_proj.weight": (384, 192),
    "mask_decoder.transformer.norm_final_attn.weight": (384,),
    "mask_decoder.iou_token.weight": (1, 384),
    "mask_decoder.mask_tokens.weight": (4, 384),
    "mask_decoder.output_upscaling.0.weight": (384, 96, 2, 2, 2),
    "mask_decoder.output_upscaling.3.weight": (96, 48, 2, 2, 2),
    "mask_decoder.output_hypernetworks_mlps.3.layers.2.weight": (48, 384),
    "mask_decoder.iou_prediction_head.layers.2.weight": (4, 256),
}


@pytest.fixture(scope="module")
def net() -> SAMMed3DNet:
    torch.manual_seed(0)
    return SAMMed3DNet().eval()


@pytest.fixture(scope="module")
def checkpoint(net, tmp_path_factory) -> str:
    """A training-style checkpoint file (``model_state_dict`` + extras), as the public ones are saved."""
    path = tmp_path_factory.mktemp("ckpt") / "sam_med3d_turbo.pth"
    torch.save({"model_state_dict": net.state_dict(), "epoch": 7}, path)
    return str(path)


def oblique_volume(size=(40, 36, 24), spacing=(0.9, 1.1, 3.0), seed=0) -> Image:
    rng = np.random.default_rng(seed)
    array = rng.normal(0, 10, size[::-1]).astype(np.float32)
    zz, yy, xx = np.indices(size[::-1])
    array += 200.0 * (((xx - 20) / 9) ** 2 + ((yy - 18) / 8) ** 2 + ((zz - 12) / 5) ** 2 < 1)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-12.0, 30.0, 5.0))
    angle = math.radians(20)
    image.SetDirection((math.cos(angle), -math.sin(angle), 0, math.sin(angle), math.cos(angle), 0, 0, 0, 1))
    return Image(image, "oblique.nrrd")


def test_parameters_have_the_public_names_and_shapes(net):
    state = net.state_dict()
    for name, shape in PUBLIC_SHAPES.items():
        assert tuple(state[name].shape) == shape, name
    assert not any("pixel_mean" in k for k in state)
    assert sum(v.numel() for v in state.values()) == pytest.approx(100.5e6, rel=0.002)  # the published size


def test_checkpoint_round_trip_is_strict_and_exact(net, checkpoint, tmp_path):
    model = load_model("sam-med3d", checkpoint, device="cpu", cache=EmbeddingCache(False))
    for name, value in net.state_dict().items():
        assert torch.equal(model.net.state_dict()[name], value), name
    cube = np.random.default_rng(1).normal(size=(128,) * 3).astype(np.float32)
    features = model.encode(cube)
    assert features.shape == (384, 8, 8, 8)
    logits, iou = model.decode(features, np.array([[[64.0, 60.0, 70.0]], [[20.0, 30.0, 40.0]]]), np.ones((2, 1)))
    assert logits.shape == (2, 128, 128, 128) and iou.shape == (2,)
    assert not torch.equal(logits[0], logits[1])  # the prompt matters
    again = load_model("sam-med3d", checkpoint, device="cpu", cache=EmbeddingCache(False))
    assert torch.equal(again.encode(cube), features)

    broken = {k: v for k, v in net.state_dict().items() if "neck.3" not in k}
    torch.save(broken, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="does not match sam-med3d"):
        load_model("sam-med3d", str(tmp_path / "partial.pth"), device="cpu")
    with pytest.raises(CheckpointError, match="not found.*SAM-Med3D"):
        load_model("sam-med3d", str(tmp_path / "missing.pth"), device="cpu")
    with pytest.raises(CheckpointError, match="--checkpoint"):
        load_model("sam-med3d", None, device="cpu")


def test_encoder_attention_matches_the_explicit_formula():
    torch.manual_seed(2)
    attention = EncoderAttention(dim=24, heads=3, cube=4)
    for table in (attention.rel_pos_d, attention.rel_pos_h, attention.rel_pos_w):
        torch.nn.init.normal_(table)
    x = torch.randn(2, 4, 4, 4, 24)
    q, k, v = attention.qkv(x).reshape(2, 64, 3, 3, 8).permute(2, 0, 3, 1, 4)
    logits = (q * 8 ** -0.5) @ k.transpose(-1, -2)
    coords = torch.stack(torch.meshgrid(*[torch.arange(4)] * 3, indexing="ij"), -1).reshape(64, 3)
    for axis, table in enumerate((attention.rel_pos_d, attention.rel_pos_h, attention.rel_pos_w)):
        offsets = table[coords[:, None, axis] - coords[None, :, axis] + 3]        # (query, key, c)
        logits = logits + torch.einsum("bhqc,qkc->bhqk", q, offsets)
    expected = (logits.softmax(-1) @ v).transpose(1, 2).reshape(2, 4, 4, 4, 24)
    assert torch.allclose(attention(x), attention.proj(expected), atol=1e-5)


def test_windowed_block_attends_over_the_zero_padded_window():
    torch.manual_seed(3)
    block = EncoderBlock(dim=24, heads=3, window=6, grid=4)
    x = torch.randn(1, 4, 4, 4, 24)
    padded = F.pad(block.norm1(x), (0, 0, 0, 2, 0, 2, 0, 2))
    expected = x + block.attn(padded)[:, :4, :4, :4]
    expected = expected + block.mlp(block.norm2(expected))
    assert torch.allclose(block(x), expected, atol=1e-5)


def test_dense_positional_encoding_swaps_the_first_two_axes_like_the_public_model(net):
    encoder = net.prompt_encoder
    dense = encoder.dense_pe()[0]
    i, j, k = 1, 5, 3
    point = torch.tensor([[(j + 0.5) / 8, (i + 0.5) / 8, (k + 0.5) / 8]])
    assert torch.allclose(dense[:, i, j, k], encoder.pe_layer.encode(point)[0], atol=1e-5)


def test_cube_crop_maps_exactly_on_an_oblique_anisotropic_image():
    image = oblique_volume()
    centre_lps = image.index_to_lps(np.array([[17.3, 20.0, 9.6]]))[0]
    crop = CubeCrop.around(image, centre_lps, spacing_mm=1.5, size=32)
    cube_points = np.random.default_rng(4).uniform(0, 31, size=(50, 3))
    assert np.allclose(crop.index_to_cube(crop.cube_to_index(cube_points)), cube_points)
    assert np.allclose(crop.cube_to_index(np.full((1, 3), crop.half)), [[17.3, 20.0, 9.6]])
    neighbours = image.index_to_lps(crop.cube_to_index(np.array([[3.0, 4, 5], [4, 4, 5], [3, 5, 5], [3, 4, 6]])))
    assert np.allclose(np.linalg.norm(neighbours[1:] - neighbours[0], axis=1), 1.5)  # physical voxel size

    i_ramp = np.broadcast_to(np.arange(image.size[0], dtype=np.float32), image.array.shape)
    cube = crop.sample(i_ramp)                     # a linear image is sampled exactly where it is defined
    grid = np.stack(np.meshgrid(*[np.arange(32.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
    index = crop.cube_to_index(grid)
    inside = np.all((index >= 0) & (index <= np.array(image.size) - 1), axis=1)
    assert inside.sum() > 1000
    assert np.allclose(cube.reshape(-1)[inside], index[inside, 0], atol=1e-3)

    cube_k = np.broadcast_to(np.arange(32.0, dtype=np.float32), (32, 32, 32))  # value = cube k coordinate
    back = crop.to_image(cube_k, image.array.shape, outside=-1.0)
    voxels = np.argwhere(back != -1.0)
    expected = crop.index_to_cube(voxels[:, ::-1].astype(float))[:, 2]
    assert len(voxels) > 1000
    assert np.allclose(back[tuple(voxels.T)], np.clip(expected, 0, 31), atol=1e-3)
    assert np.all(np.abs(crop.index_to_cube(np.argwhere(back == -1.0)[:, ::-1].astype(float)) - crop.half)
                  .max(axis=1) >= crop.half)


def test_peaks_are_refined_between_feature_cells():
    features = torch.zeros(2, 8, 8, 8)
    features[1] = 1.0
    features[0, 3, 4, 4] = features[0, 4, 4, 4] = 5.0   # two neighbouring cells along i match equally
    view = CubeView(CubeCrop(np.zeros(3), np.ones(3)), features, np.ones((128,) * 3, dtype=bool))
    score = cube_similarity(view, F.normalize(torch.tensor([1.0, 0.2]), dim=0))
    peak = np.unravel_index(int(np.argmax(score)), score.shape)
    refined = refine_peak(score - score.min(), peak, 16)
    assert abs(refined[0] - 63.5) < 2.0            # between cell centres 55.5 and 71.5
    assert abs(refined[1] - 71.5) < 2.0 and abs(refined[2] - 71.5) < 2.0


def test_segment_and_register_end_to_end_on_3d_volumes(checkpoint, tmp_path):
    fixed, moving = oblique_volume(), oblique_volume(seed=1)
    model = load_model("sam-med3d", checkpoint, device="cpu", cache=EmbeddingCache(tmp_path / "cache"))
    stack = SliceStack(fixed, None)
    click = fixed.index_to_lps(np.array([[20.0, 18.0, 12.0]]))[0]
    roi, view, mask_cube = segment_point(model, stack, click)
    assert roi.mask.shape == stack.shape and mask_cube.shape == (128,) * 3
    assert view.features.shape == (384, 8, 8, 8)

    ras = click * np.array([-1, -1, 1])
    result = register(fixed, moving, [ras], model="sam-med3d", checkpoint=checkpoint, device="cpu",
                      pairs_only=True, cache=EmbeddingCache(tmp_path / "cache"))
    pair, = result.pairs
    assert result.report["native_3d"] is True
    assert pair.roi_x.mask.shape == stack.shape and pair.roi_y.mask.shape == SliceStack(moving, None).shape
    assert {"iou_x", "iou_y", "cycle_ok", "prototype_cosine"} <= set(pair.quality)
    assert pair.accepted or pair.rejected_because    # random weights: whichever, it says why

    with pytest.raises(Cancelled):
        register(fixed, moving, [ras], model="sam-med3d", checkpoint=checkpoint, device="cpu", pairs_only=True,
                 cancel=lambda: True, cache=EmbeddingCache(False))
    with pytest.raises(PromptError, match="point prompts only"):
        register(fixed, moving, [], boxes_ras=[np.r_[ras - 2, ras + 2]], model="sam-med3d", checkpoint=checkpoint,
                 device="cpu", pairs_only=True, cache=EmbeddingCache(False))


def test_sam_med3d_refuses_2d_images_and_missing_checkpoints(checkpoint, data_dir, tmp_path, capsys):
    fixed_2d = str(data_dir / "ctchest4" / "pair2d_fixed.nrrd")
    moving_2d = str(data_dir / "ctchest4" / "pair2d_moving.nrrd")
    code = main(["register", fixed_2d, moving_2d, "-o", str(tmp_path / "out"), "--prompt", "0,0,0",
                 "--model", "sam-med3d", "--checkpoint", checkpoint, "--quiet"])
    assert code == InputImageError.exit_code and "3D model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    code = main(["segment", str(data_dir / "ctchest4" / "ct.nrrd"), "--prompt", "0,0,-200", "--model", "sam-med3d",
                 "-o", str(tmp_path / "x.seg.nrrd"), "--quiet"])
    assert code == CheckpointError.exit_code and "--checkpoint" in capsys.readouterr().err
