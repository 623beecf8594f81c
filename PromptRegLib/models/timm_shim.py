"""The four names LiteMedSAM's TinyViT imports from timm, provided without installing timm.

Installing timm pulls torchvision, which on CPU machines replaces torch with a multi-GB CUDA build.
TinyViT only needs ``DropPath`` (identity at inference; drop rate 0 in LiteMedSAM), ``to_2tuple``,
``trunc_normal_`` and the ``register_model`` decorator. Hand-written on purpose; used only if timm is absent.
"""
from __future__ import annotations

import importlib.util
import sys
import types

import torch.nn as nn


class DropPath(nn.Module):
    """Stochastic depth; LiteMedSAM is built with drop rate 0, so this is the identity."""

    def __init__(self, drop_prob: float | None = None):
        super().__init__()
        self.drop_prob = drop_prob or 0.0

    def forward(self, x):
        if self.drop_prob and self.training:
            keep = 1.0 - self.drop_prob
            mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
            return x * mask / keep
        return x


def to_2tuple(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def register_model(function):
    return function


def install() -> None:
    """Register ``timm.models.layers`` and ``timm.models.registry`` if the real timm is not installed."""
    if "timm" in sys.modules or importlib.util.find_spec("timm") is not None:
        return
    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")
    registry = types.ModuleType("timm.models.registry")
    layers.DropPath, layers.to_2tuple, layers.trunc_normal_ = DropPath, to_2tuple, nn.init.trunc_normal_
    registry.register_model = register_model
    timm.models, models.layers, models.registry = models, layers, registry
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers,
                        "timm.models.registry": registry})
