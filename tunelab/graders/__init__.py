"""Graders: programs that score a sampled answer, for reinforcement fine-tuning (``rft``) and
its dry run (``tunelab graders test``).

- :mod:`~tunelab.graders.spec`: the JSON declarations, validated (no torch, no execution);
- :mod:`~tunelab.graders.text`: string_check, text_similarity, json_schema, numeric;
- :mod:`~tunelab.graders.sandbox`: ``python`` graders in a fenced child process;
- :mod:`~tunelab.graders.score_model`: a TuneLab reward model as a grader;
- :mod:`~tunelab.graders.build`: runnable graders, combined by weighted sum, all or any.
"""

from tunelab.graders.spec import GRADER_TYPES, GraderSpec, parse_grader

__all__ = ["GRADER_TYPES", "GraderSpec", "parse_grader"]
