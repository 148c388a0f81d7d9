"""One typed config per job type. Each is the REST body, the CLI options, the SDK arguments and
the stored job spec at once; each validates itself on creation and reports every problem at once
(pydantic collects all field errors). Nothing here imports torch, so the SDK stays light."""

from tunelab.configs.dpo import DPOConfig
from tunelab.configs.embedding import EmbeddingConfig
from tunelab.configs.rft import RFTConfig
from tunelab.configs.rlhf import RewardModelConfig, RLHFConfig
from tunelab.configs.sft import RECOMMENDED_LEARNING_RATE, SFTConfig

__all__ = [
    "DPOConfig",
    "RECOMMENDED_LEARNING_RATE",
    "RFTConfig",
    "RLHFConfig",
    "RewardModelConfig",
    "SFTConfig",
]

CONFIGS = {"sft": SFTConfig, "rlhf": RLHFConfig, "dpo": DPOConfig}
"""Method name -> its typed config. Later methods (rlhf, dpo) add themselves here."""
CONFIGS["embedding"] = EmbeddingConfig
CONFIGS["rft"] = RFTConfig


def config_class(method: str):
    if method not in CONFIGS:
        raise KeyError(f"unknown tuning method {method!r} (known: {', '.join(sorted(CONFIGS))})")
    return CONFIGS[method]
