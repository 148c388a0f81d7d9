"""One request, one answer, whatever face asks: ``tunelab predict``, ``tunelab eval``, an RLHF
rollout and the HTTP server in fp32 (``/v1/chat/completions`` on a real uvicorn server on
loopback, as ``tunelab serve --precision fp32`` runs it) all generate through the model runner,
so for the same prompt and adapter they give the same tokens, greedy and seeded alike."""

import httpx
import pytest
import torch
from lora_helpers import make_adapter_bundle
from support import LiveServer, write_jsonl

from tunelab.data.template import prompt_ids
from tunelab.models import load_causal_lm, load_tokenizer
from tunelab.serving.generation import GenerationParams
from tunelab.serving.runner import ModelRunner, sample_answers

QUESTION = "tell me a long story about cats, dogs and a very patient owl"
MAX_TOKENS = 12
TINY_BASE = "tiny-llama"
MESSAGES = [{"role": "user", "content": QUESTION}]


@pytest.fixture
def tuned(services, tmp_path, tiny_model_dir):
    """A LoRA adapter bundle (random, non-zero: it changes every answer) registered as the tuned
    model ``storyteller``, stored in the artifact store as a job's bundle is."""
    from tunelab.registry.endpoints import deploy_version
    from tunelab.registry.models import register_version

    folder = make_adapter_bundle(tiny_model_dir, tmp_path / "bundle", seed=3, std=0.3)
    load_tokenizer(tiny_model_dir).save_pretrained(folder)  # a bundle carries its tokenizer
    stored = services.artifacts.put_dir(folder, "adapters/storyteller")
    version = register_version(
        services.db,
        name="storyteller",
        method="sft",
        base_model=str(tiny_model_dir),
        adapter_uri=stored.uri,
        adapter_sha256=stored.sha256,
        adapter_size=stored.size_bytes,
        config={},
        data_stats=None,
        metrics=None,
        source_job_id=None,
    )
    deploy_version(services.db, version.id)  # only deployed versions are served
    return services.artifacts.local_path(stored.uri)


@pytest.fixture
def db_url(tmp_path):
    """These tests exercise generation, not the database: SQLite only."""
    return f"sqlite:///{tmp_path / 'tunelab.db'}"


@pytest.fixture
def server(services, tiny_model_dir):
    """The real server (uvicorn on loopback) with inference, and a client holding a key. The
    tiny model is a base the operator made servable as ``tiny-llama`` (a request never names a
    folder)."""
    from tunelab.api.app import create_app
    from tunelab.auth import create_key
    from tunelab.models.bases import add_base
    from tunelab.serving.pool import InferencePool

    add_base(TINY_BASE, str(tiny_model_dir))

    api_key = create_key(services.db, "tests").secret
    pool = InferencePool(services, precision="fp32")  # `tunelab serve --precision fp32`
    with (
        LiveServer(create_app(services, inference=pool)) as live,
        httpx.Client(
            base_url=live.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=120
        ) as client,
    ):
        yield client
    pool.close()


def chat(client, model: str, messages, **options) -> list[str]:
    response = client.post(
        "/v1/chat/completions", json={"model": model, "messages": messages, **options}
    )
    assert response.status_code == 200, response.text
    return [c["message"]["content"] for c in response.json()["choices"]]


def test_greedy_answer_is_the_same_in_every_face(tmp_path, capsys, tiny_model_dir, tuned, server):
    from peft import PeftModel

    from tunelab.cli.predict import predict
    from tunelab.evaluation.runner import evaluate_models

    greedy = GenerationParams(temperature=0, max_output_tokens=MAX_TOKENS)
    tok = load_tokenizer(tiny_model_dir)

    # The server: the engine's scheduler, the adapter mixed in by the adapter cache.
    (served,) = chat(server, "storyteller", MESSAGES, temperature=0, max_tokens=MAX_TOKENS)

    # tunelab predict (the CLI function, the model named as the user names it).
    predict(
        QUESTION,
        model="storyteller",
        system=None,
        temperature=0,
        top_p=0.8,
        top_k=40,
        max_output_tokens=MAX_TOKENS,
        seed=None,
    )
    predicted = capsys.readouterr().out.rstrip("\n")

    # tunelab eval: the outputs the report keeps for each example.
    data = write_jsonl(tmp_path / "eval.jsonl", [{"input_text": QUESTION, "output_text": "x"}])
    report = evaluate_models(["storyteller"], data, task="generation", params=greedy)
    evaluated = report.examples[0].outputs["storyteller"]

    # An RLHF rollout: the rollout's call on a live, trainable PEFT policy.
    policy = PeftModel.from_pretrained(load_causal_lm(tiny_model_dir), tuned, is_trainable=True)
    prompt = prompt_ids(tok, MESSAGES)
    (answer,), (cut,) = sample_answers(ModelRunner(policy, tok), [prompt], 1, greedy)
    rollout = tok.decode(answer, skip_special_tokens=True)

    assert len(tok(served)["input_ids"]) >= 4, served  # a real answer, not an empty string
    assert predicted == evaluated == served.strip() == rollout.strip()
    # ...and the adapter is in it: the base model answers otherwise.
    (base,) = chat(server, TINY_BASE, MESSAGES, temperature=0, max_tokens=MAX_TOKENS)
    assert base != served
    assert cut == (len(answer) == MAX_TOKENS)


def test_seeded_sampling_is_the_same_in_every_face(tmp_path, capsys, tiny_model_dir, tuned, server):
    from tunelab.cli.predict import predict
    from tunelab.evaluation.runner import evaluate_models

    options = dict(temperature=1.3, top_p=0.9, top_k=50, seed=1234)
    (served,) = chat(server, "storyteller", MESSAGES, max_tokens=MAX_TOKENS, **options)
    predict(QUESTION, model="storyteller", system=None, max_output_tokens=MAX_TOKENS, **options)
    predicted = capsys.readouterr().out.rstrip("\n")
    data = write_jsonl(tmp_path / "eval.jsonl", [{"input_text": QUESTION, "output_text": "x"}])
    params = GenerationParams(max_output_tokens=MAX_TOKENS, **options)
    report = evaluate_models(["storyteller"], data, task="generation", params=params)
    assert len(load_tokenizer(tiny_model_dir)(served)["input_ids"]) >= 4, served
    assert predicted == report.examples[0].outputs["storyteller"] == served.strip()
    (other,) = chat(server, "storyteller", MESSAGES, max_tokens=MAX_TOKENS, **options | {"seed": 7})
    assert other != served  # the seed, not greedy decoding, made them equal


def test_rlhf_rollout_draws_what_the_server_draws(tmp_path, monkeypatch, tiny_model_dir, server):
    """The rollouts of a real RLOO step (the policy's fresh adapter is the base model, as its
    LoRA B starts at zero) are the server's seeded samples at temperature 1 for the same
    prompts: candidate j of prompt i drawn with seed ``step seed + i * k + j``."""
    from support import preference_rows

    import tunelab.recipes.rlhf as rlhf
    from tunelab.configs.rlhf import RLHFConfig
    from tunelab.recipes.reward_model import train_reward_model

    config = RLHFConfig(
        base_model=str(tiny_model_dir),
        reward_model_train_steps=2,
        reinforcement_learning_train_steps=1,
        target_sequence_length=MAX_TOKENS,
        prompts_per_step=2,
        samples_per_prompt=3,
        precision="fp32",  # as the server computes; a bf16 run samples a bf16 copy of the policy
        seed=5,
    )
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(8))
    questions = [f"Question {i} about owls?" for i in range(2)]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"input_text": q} for q in questions])
    rm = train_reward_model(config.reward_model(), pairs, tmp_path / "rm")

    rollouts = []

    def spy(runner, prompt_list, samples, params):
        answers, cut = sample_answers(runner, prompt_list, samples, params)
        rollouts.append(([list(p) for p in prompt_list], samples, params, answers))
        return answers, cut

    monkeypatch.setattr(rlhf, "sample_answers", spy)
    rlhf.train_policy(config, prompts, rm.bundle_dir, tmp_path / "run")
    ((batch, k, params, answers),) = rollouts
    assert (params.temperature, params.top_k, params.top_p) == (1.0, 0, 1.0)

    tok = load_tokenizer(tiny_model_dir)
    by_ids = {tuple(prompt_ids(tok, [{"role": "user", "content": q}])): q for q in questions}
    for i, ids in enumerate(batch):
        question = by_ids[tuple(ids)]  # the rollout's prompt is the chat prompt the server renders
        served = chat(
            server,
            TINY_BASE,
            [{"role": "user", "content": question}],
            n=k,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            seed=params.seed + i * k,
            max_tokens=MAX_TOKENS,
        )
        drawn = [
            tok.decode(torch.as_tensor(a).tolist(), skip_special_tokens=True)
            for a in answers[i * k : (i + 1) * k]
        ]
        assert served == drawn
    assert len({tuple(a) for a in answers}) > 1  # sampled, not greedy
