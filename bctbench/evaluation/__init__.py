"""Evaluation: pure metrics, search, feature extraction and the compatibility evaluator."""
