"""Evaluation: metrics on generated text and base-vs-tuned comparisons with bootstrap intervals.

metrics.py     exact match, classification F1, BLEU, ROUGE, token F1 (pure, on strings)
bootstrap.py   percentile and paired bootstrap intervals
tasks.py       which metrics each task reports; inferring the task from the data
dataset.py     reading (validating, sampling) an evaluation set
model_refs.py  tuned model name / adapter folder / base model -> loaded model
generate.py    batched, left-padded generation
runner.py      evaluate_models(): the whole evaluation, returning an EvalReport
report.py      save_report(): report.json, predictions.jsonl and plots
"""
