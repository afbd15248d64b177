"""Analyses that take a model and a batch (or cache) and return plain results (DataFrames)."""

from interp.analysis.evaluation import evaluate, greedy_predictions

__all__ = ["evaluate", "greedy_predictions"]
