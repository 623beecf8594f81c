"""SAM-Med3D's network, written for PromptReg, with parameter names matching the public checkpoints.

Facts read from the public model definition (uni-medical/SAM-Med3D, ``build_sam3D_vit_b_ori``, the
layout of the "turbo" checkpoint): a 128³ single-channel cube, 16³ patches → an 8×8×8 token grid; a
ViT-B (768 wide, 12 blocks, 12 heads) with decomposed relative positions, windowed attention (window 14,
so the 8³ grid is zero-padded to one 14³ window) except blocks 2, 5, 8, 11 which attend globally; a neck
to 384 channels; SAM's prompt encoder and two-way mask decoder in 3D with 384 channels.

One quirk is kept on purpose because the weights were trained with it: the dense positional encoding
of grid cell (i, j, k) encodes the coordinates (j, i, k), while point prompts are encoded in cube index
order (i, j, k).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CUBE_SIZE = 128
PATCH_SIZE = 16
GRID_SIZE = CUBE_SIZE // PATCH_SIZE
PROMPT_DIM = 384


class LayerNorm3d(nn.Module):
    """Layer norm over the channel axis of (B, C, D, H, W)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        variance = (x - mean).pow(2).mean(1, keepdim=True)
        normalized = (x - mean) / torch.sqrt(variance + self.eps)
        return self.weight[:, None, None, None] * normalized + self.bias[:, None, None, None]


class MLPBlock(nn.Module):
    def __init__(self, dim: int, hidden: int, activation=nn.GELU):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.act = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """``layers`` linear layers with ReLU between them."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, depth: int):
        super().__init__()
        sizes = [dim_in] + [hidden] * (depth - 1) + [dim_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x


# --- image encoder --------------------------------------------------------------------------------------
def _relative_table(size: int, table: torch.Tensor) -> torch.Tensor:
    """(2·size − 1, c) learned offsets → (size, size, c) indexed by (query, key) position."""
    positions = torch.arange(size, device=table.device)
    return table[positions[:, None] - positions[None, :] + size - 1]


class EncoderAttention(nn.Module):
    """Multi-head self-attention over a (B, D, H, W, C) token cube with decomposed relative positions."""

    def __init__(self, dim: int, heads: int, cube: int):
        super().__init__()
        self.heads = heads
        head_dim = dim // heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_d = nn.Parameter(torch.zeros(2 * cube - 1, head_dim))
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * cube - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * cube - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, d, h, w, dim = x.shape
        tokens = d * h * w
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                     # (B, heads, tokens, c)
        q_cube = q.reshape(batch * self.heads, d, h, w, -1)
        bias_d = torch.einsum("bdhwc,dkc->bdhwk", q_cube, _relative_table(d, self.rel_pos_d))
        bias_h = torch.einsum("bdhwc,hkc->bdhwk", q_cube, _relative_table(h, self.rel_pos_h))
        bias_w = torch.einsum("bdhwc,wkc->bdhwk", q_cube, _relative_table(w, self.rel_pos_w))
        bias = (bias_d[..., :, None, None] + bias_h[..., None, :, None] + bias_w[..., None, None, :])
        bias = bias.reshape(batch, self.heads, tokens, tokens)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(batch, d, h, w, dim))


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, grid: int):
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = EncoderAttention(dim, heads, window if window else grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, dim * 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window:
            x = self._windowed(x)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))

    def _windowed(self, x: torch.Tensor) -> torch.Tensor:
        batch, d, h, w, dim = x.shape
        size = self.window
        padded = [math.ceil(n / size) * size for n in (d, h, w)]
        x = F.pad(x, (0, 0, 0, padded[2] - w, 0, padded[1] - h, 0, padded[0] - d))
        counts = [n // size for n in padded]
        windows = x.reshape(batch, counts[0], size, counts[1], size, counts[2], size, dim)
        windows = windows.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, size, size, size, dim)
        out = self.attn(windows).reshape(batch, *counts, size, size, size, dim)
        out = out.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(batch, *padded, dim)
        return out[:, :d, :h, :w]


class PatchEmbed3D(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv3d(1, dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 4, 1)


class ImageEncoder3D(nn.Module):
    def __init__(self, dim: int = 768, depth: int = 12, heads: int = 12, global_blocks=(2, 5, 8, 11),
                 window: int = 14):
        super().__init__()
        self.patch_embed = PatchEmbed3D(dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, GRID_SIZE, GRID_SIZE, GRID_SIZE, dim))
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads, 0 if i in global_blocks else window, GRID_SIZE)
                                    for i in range(depth))
        self.neck = nn.Sequential(nn.Conv3d(dim, PROMPT_DIM, 1, bias=False), LayerNorm3d(PROMPT_DIM),
                                  nn.Conv3d(PROMPT_DIM, PROMPT_DIM, 3, padding=1, bias=False), LayerNorm3d(PROMPT_DIM))

    def forward(self, cube: torch.Tensor) -> torch.Tensor:
        """(B, 1, 128, 128, 128) normalised intensities → (B, 384, 8, 8, 8)."""
        x = self.patch_embed(cube) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 4, 1, 2, 3))


# --- prompt encoder --------------------------------------------------------------------------------------
class RandomFourierPE(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(3, features))

    def encode(self, coords_01: torch.Tensor) -> torch.Tensor:
        angles = 2 * math.pi * ((2 * coords_01 - 1) @ self.positional_encoding_gaussian_matrix)
        return torch.cat([angles.sin(), angles.cos(), angles.sin()], dim=-1)

    def dense(self, size: int) -> torch.Tensor:
        """(C, size, size, size); cell (i, j, k) encodes (j, i, k) — see the module docstring."""
        centres = (torch.arange(size, dtype=torch.float32, device=self.positional_encoding_gaussian_matrix.device)
                   + 0.5) / size
        i, j, k = torch.meshgrid(centres, centres, centres, indexing="ij")
        return self.encode(torch.stack([j, i, k], dim=-1)).permute(3, 0, 1, 2)


class PromptEncoder3D(nn.Module):
    def __init__(self, dim: int = PROMPT_DIM, mask_channels: int = 16):
        super().__init__()
        self.pe_layer = RandomFourierPE(dim // 3)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, dim) for _ in range(2))
        self.not_a_point_embed = nn.Embedding(1, dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv3d(1, mask_channels // 4, 2, stride=2), LayerNorm3d(mask_channels // 4), nn.GELU(),
            nn.Conv3d(mask_channels // 4, mask_channels, 2, stride=2), LayerNorm3d(mask_channels), nn.GELU(),
            nn.Conv3d(mask_channels, dim, 1))
        self.no_mask_embed = nn.Embedding(1, dim)

    def dense_pe(self) -> torch.Tensor:
        return self.pe_layer.dense(GRID_SIZE)[None]

    def forward(self, points: torch.Tensor, labels: torch.Tensor, mask_input: torch.Tensor | None):
        """Points (B, N, 3) in cube voxel indices, labels (B, N) (1 positive, 0 negative); ``mask_input``
        (B, 1, 32, 32, 32) logits or None → sparse (B, N + 1, C) and dense (B, C, 8, 8, 8) embeddings."""
        batch = points.shape[0]
        points = torch.cat([points + 0.5, points.new_zeros(batch, 1, 3)], dim=1)
        labels = torch.cat([labels, labels.new_full((batch, 1), -1)], dim=1)
        sparse = self.pe_layer.encode(points / CUBE_SIZE)
        sparse = torch.where((labels == -1)[..., None], self.not_a_point_embed.weight, sparse)
        sparse = sparse + (labels == 0)[..., None] * self.point_embeddings[0].weight
        sparse = sparse + (labels == 1)[..., None] * self.point_embeddings[1].weight
        if mask_input is not None:
            dense = self.mask_downscaling(mask_input)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1, 1).expand(batch, -1, GRID_SIZE, GRID_SIZE,
                                                                             GRID_SIZE)
        return sparse, dense


# --- mask decoder ----------------------------------------------------------------------------------------
class TokenAttention(nn.Module):
    """SAM's attention with projections to ``dim // downsample`` channels."""

    def __init__(self, dim: int, heads: int, downsample: int = 1):
        super().__init__()
        inner = dim // downsample
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, inner), nn.Linear(dim, inner), nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        def split(x):
            return x.reshape(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(q)), split(self.k_proj(k)), split(self.v_proj(v)))
        return self.out_proj(out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1))


class TwoWayBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int, skip_first_pe: bool):
        super().__init__()
        self.self_attn = TokenAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = TokenAttention(dim, heads, 2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = TokenAttention(dim, heads, 2)
        self.skip_first_pe = skip_first_pe

    def forward(self, queries, keys, query_pe, key_pe):
        if self.skip_first_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, keys + key_pe, keys))
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.norm4(keys + self.cross_attn_image_to_token(keys + key_pe, queries + query_pe, queries))
        return queries, keys


class TwoWayTransformer3D(nn.Module):
    def __init__(self, dim: int = PROMPT_DIM, depth: int = 2, heads: int = 8, mlp_dim: int = 2048):
        super().__init__()
        self.layers = nn.ModuleList(TwoWayBlock(dim, heads, mlp_dim, i == 0) for i in range(depth))
        self.final_attn_token_to_image = TokenAttention(dim, heads, 2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor):
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys))
        return queries, keys


class MaskDecoder3D(nn.Module):
    def __init__(self, dim: int = PROMPT_DIM, outputs: int = 3):
        super().__init__()
        self.transformer = TwoWayTransformer3D(dim)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(outputs + 1, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(dim, dim // 4, 2, stride=2), LayerNorm3d(dim // 4), nn.GELU(),
            nn.ConvTranspose3d(dim // 4, dim // 8, 2, stride=2), nn.GELU())
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(outputs + 1))
        self.iou_prediction_head = MLP(dim, 256, outputs + 1, 3)

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor):
        """→ mask logits (B, 4, 32, 32, 32) for all mask tokens and predicted IoU (B, 4); token 0 is the
        single-mask output the public inference uses."""
        batch = sparse.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight])[None].expand(batch, -1, -1)
        tokens = torch.cat([output_tokens, sparse], dim=1)
        source = image.expand(batch, -1, -1, -1, -1) + dense
        hidden, keys = self.transformer(source, image_pe.expand(batch, -1, -1, -1, -1), tokens)
        mask_tokens = hidden[:, 1: 1 + len(self.output_hypernetworks_mlps)]
        upscaled = self.output_upscaling(keys.transpose(1, 2).reshape(source.shape))
        weights = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        masks = (weights @ upscaled.flatten(2)).reshape(batch, -1, *upscaled.shape[2:])
        return masks, self.iou_prediction_head(hidden[:, 0])


class SAMMed3DNet(nn.Module):
    """The three parts under the public names ``image_encoder``, ``prompt_encoder``, ``mask_decoder``."""

    def __init__(self, encoder_dim: int = 768, encoder_depth: int = 12, encoder_heads: int = 12,
                 global_blocks=(2, 5, 8, 11)):
        super().__init__()
        self.image_encoder = ImageEncoder3D(encoder_dim, encoder_depth, encoder_heads, global_blocks)
        self.prompt_encoder = PromptEncoder3D()
        self.mask_decoder = MaskDecoder3D()
