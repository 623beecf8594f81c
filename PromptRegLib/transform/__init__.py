"""Fitting the transform: affine from ROI pairs, the dense stage, the field and its measures."""
