"""Tuned models and their versions, datasets, artifacts and lineage."""
