"""Serving: generation parameters and loading base models with tuned adapters."""
