"""Tuning jobs: the state machine, pipeline steps, the store and the worker."""
