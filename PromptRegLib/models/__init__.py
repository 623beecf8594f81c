"""Promptable segmentation backends behind one interface (:class:`PromptableSegmenter`)."""
from .base import PromptableSegmenter, SliceGeometry
from .registry import MODEL_NAMES, load_model

__all__ = ["PromptableSegmenter", "SliceGeometry", "MODEL_NAMES", "load_model"]
