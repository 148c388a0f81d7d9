"""The Python SDK, shaped like Vertex AI's, talking to a TuneLab server over HTTP.

    import tunelab
    from tunelab import sft
    from tunelab.sdk import TextGenerationModel

    tunelab.init(url="http://127.0.0.1:8080", api_key="tl-…")
    job = sft.train(source_model="smollm2-135m-instruct", train_dataset="train.jsonl",
                    tuned_model_display_name="ticket-router")
    while not job.has_ended:
        time.sleep(10); job.refresh()
    model = TextGenerationModel.from_pretrained("smollm2-135m-instruct").get_tuned_model(job.tuned_model_name)
    print(model.predict("Route this ticket …", temperature=0).text)

It needs only httpx and pydantic: no torch on the client.
"""

from tunelab.sdk.client import TuneLabError, init
from tunelab.sdk.models import (
    ChatModel,
    ChatSession,
    TextEmbeddingModel,
    TextGenerationModel,
    TextGenerationResponse,
)
from tunelab.sdk.registry import ModelRegistry
from tunelab.sdk.tuning import SupervisedTuningJob, TuningJob

__all__ = [
    "ChatModel",
    "ChatSession",
    "ModelRegistry",
    "SupervisedTuningJob",
    "TextEmbeddingModel",
    "TextGenerationModel",
    "TextGenerationResponse",
    "TuneLabError",
    "TuningJob",
    "init",
]
