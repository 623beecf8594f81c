"""Geometry and images: physical space every stage shares (no model, no torch)."""
