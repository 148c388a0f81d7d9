"""Datasets: JSONL formats, validation with line numbers, chat templating and batching."""
