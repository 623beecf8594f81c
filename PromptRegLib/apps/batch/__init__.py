"""Cohorts: every pair of a table registered on Dask (``promptreg batch``), resumable, with a summary."""
from .run import run_batch
from .table import PairRow, read_pairs

__all__ = ["PairRow", "read_pairs", "run_batch"]
