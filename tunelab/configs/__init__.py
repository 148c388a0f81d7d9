"""One typed config per job type. Each is the REST body, the CLI options, the SDK arguments and
the stored job spec at once; each validates itself on creation and reports every problem at once
(pydantic collects all field errors). Nothing here imports torch, so the SDK stays light.
Which config belongs to which method is said once, in the method table (tunelab/jobs/methods.py)."""

from tunelab.configs.dpo import DPOConfig
from tunelab.configs.embedding import EmbeddingConfig
from tunelab.configs.rft import RFTConfig
from tunelab.configs.rlhf import RewardModelConfig, RLHFConfig
from tunelab.configs.sft import RECOMMENDED_LEARNING_RATE, SFTConfig

__all__ = [
    "DPOConfig",
    "EmbeddingConfig",
    "RECOMMENDED_LEARNING_RATE",
    "RFTConfig",
    "RLHFConfig",
    "RewardModelConfig",
    "SFTConfig",
]
