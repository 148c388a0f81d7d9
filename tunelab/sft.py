"""``from tunelab import sft; sft.train(...)``: supervised tuning through the SDK (as Vertex's
``vertexai.tuning.sft``)."""

from tunelab.sdk.tuning import SupervisedTuningJob, train

__all__ = ["SupervisedTuningJob", "train"]
