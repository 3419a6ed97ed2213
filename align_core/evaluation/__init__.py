"""Evaluation of trained models: per-dataset measures, win rates against a reference (``evaluate``)."""
