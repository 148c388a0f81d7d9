"""Mechanics shared by the recipes: atomic checkpoints, metrics log, progress, early stopping."""
