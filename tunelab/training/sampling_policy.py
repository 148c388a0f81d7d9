"""The policy as RL rollouts sample it: a decode-only copy with the current LoRA merged in.

RLOO and RFT sample ``k`` answers per prompt from the policy at every step, about half of a
step's time. Decoding the live training model means PEFT's unmerged LoRA layers (two more
small matmuls and an add per linear layer per token) in fp32, whatever the run's precision.
Where the run trains in bf16 (a CPU with AMX or AVX512-BF16, or CUDA), rollouts decode a
plain copy of the model in bf16 instead, whose linear weights are the policy's merged ones::

    W_sample = bf16(W + scaling * B @ A)        # every LoRA'd linear layer, fp32 sum, one rounding

rebuilt from the live adapter before each step's rollouts (:meth:`SamplingPolicy.current`),
so the samples always come from the policy the optimizer just left. The copy has no PEFT
layers, so the serving runner's lean decode step (``tunelab.serving.fast_decode``) runs it
with bf16 matmuls over its preallocated KV cache (one prefill per prompt, shared by the
prompt's ``k`` samples, is the runner's own). Measured in RLOO steps on an Intel Xeon with
AMX, one thread, 4 prompts x 4 samples of <= 32 tokens of SmolLM2-135M: the rollouts took
5.4 CPU-s a step through PEFT in fp32, 2.6 s from the bf16 copy plus 0.1 s to merge
(bench/RESULTS.md).

On a CPU with oneDNN the copy's linear layers are also prepacked into oneDNN's blocked layout
(``tunelab.serving.prepacked``, repacked after each merge): bit-identical products without the
per-call reorder of every weight, 2.29 -> 1.80 CPU-s of rollout a step in the measure above,
+0.1 s of merge.

Costs: the copy holds every weight once more in bf16 (2 bytes a parameter: ~270 MB for a
135M model; the rotary tables stay fp32, as in training), its linear weights once more in the
packed layout (~+290 MB peak RSS measured), and each refresh is one rank-``r`` product per linear
layer (~0.1 s for SmolLM2-135M on one core) plus a repack of it (~0.1 s).

An fp32 run keeps decoding the live model through PEFT: a merged fp32 copy measured no faster
(the LoRA terms are a small share of an fp32 step) and would hold 4 bytes a parameter more,
and fp32 rollouts stay token for token what every other face (predict, eval, the server in fp32)
draws for the same adapter. So does a model this module cannot merge exactly (DoRA, a LoRA
bias, transposed weights): it is decoded live, as before, and logged.
"""

from __future__ import annotations

import copy
import logging

import torch

from tunelab.serving.generation import GenerationParams
from tunelab.serving.prepacked import PrepackedLinear, prepack_linears

logger = logging.getLogger(__name__)


class SamplingPolicy:
    """What a run's rollouts decode: ``model`` itself (fp32), or a bf16 copy of it with
    adapter ``adapter`` merged in, refreshed by :meth:`current`.

    ``model``: the PEFT LoRA model being trained; ``precision``: the run's (``fp32`` or
    ``bf16``, as resolved by the run's fast path).
    """

    def __init__(self, model: torch.nn.Module, precision: str, adapter: str = "default"):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
        self.model, self.adapter = model, adapter
        self.copy: torch.nn.Module | None = None
        """The merged bf16 copy; None: rollouts decode ``model`` itself."""
        self._merges: list[tuple[torch.Tensor, torch.nn.Module, PrepackedLinear | None]] = []
        """(weight of the copy, the live LoRA layer it merges, the copy's prepacked layer that
        reads that weight if any), one per LoRA'd linear layer."""
        self._scratch: dict[tuple[torch.Size, torch.dtype], torch.Tensor] = {}
        if precision == "bf16":
            reason = _unmergeable(model, adapter)
            if reason:
                logger.info("rollouts decode the live model (%s)", reason)
            else:
                try:
                    self.copy = self._build(torch.bfloat16)
                except (AttributeError, KeyError, RuntimeError, ValueError) as e:
                    # An architecture whose fresh model does not mirror the loaded one: slower
                    # rollouts, not a failed run.
                    logger.warning("rollouts decode the live model (no bf16 copy: %s)", e)
                    self._merges = []

    @property
    def merged(self) -> bool:
        """Whether rollouts decode the merged copy (else the live model)."""
        return self.copy is not None

    @torch.no_grad()
    def current(self) -> torch.nn.Module:
        """The model to sample from now: the copy with the adapter as it is now merged into it,
        or the live model. Call it before each step's rollouts (after the optimizer's step)."""
        if self.copy is None:
            return self.model
        for weight, layer, packed in self._merges:
            a = layer.lora_A[self.adapter].weight  # (r, in)
            b = layer.lora_B[self.adapter].weight  # (out, r)
            base = layer.base_layer.weight  # (out, in), the frozen fp32 weight
            key = (base.shape, base.dtype)
            scratch = self._scratch.get(key)
            if scratch is None:  # one buffer per shape: no fresh pages every step
                scratch = self._scratch[key] = torch.empty_like(base)
            # W + s B A in the weights' dtype, then one rounding to the copy's.
            scaling = float(layer.scaling[self.adapter])
            torch.addmm(base, b.to(base.dtype), a.to(base.dtype), alpha=scaling, out=scratch)
            weight.copy_(scratch)
            if packed is not None:
                packed.repack()
        return self.copy

    def _build(self, dtype: torch.dtype) -> torch.nn.Module:
        """A plain ``*ForCausalLM`` of the live model's architecture in ``dtype``: every weight
        copied from the live model (base weights of LoRA'd layers; merged by :meth:`current`),
        buffers (the rotary tables) kept as they are, tied weights tied again."""
        from transformers import AutoModelForCausalLM

        live = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        with torch.device("meta"):  # no memory and no random init for weights overwritten next
            plain = AutoModelForCausalLM.from_config(copy.deepcopy(live.config), dtype=dtype)
        device = next(self.model.parameters()).device
        plain.to_empty(device=device)
        copies: dict[int, torch.nn.Parameter] = {}  # id of a live tensor -> its copy
        for name, param in list(plain.named_parameters(remove_duplicate=False)):
            owner_name, _, attr = name.rpartition(".")
            owner = plain.get_submodule(owner_name)
            source_module = live.get_submodule(owner_name)
            lora = source_module if hasattr(source_module, "base_layer") else None
            source = getattr(lora.base_layer if lora is not None else source_module, attr)
            if id(source) in copies:  # tied to a weight copied already (lm_head / embeddings)
                setattr(owner, attr, copies[id(source)])
                continue
            param.requires_grad_(False)
            param.copy_(source.detach())
            copies[id(source)] = param
            if lora is not None and attr == "weight":
                self._merges.append((param, lora, None))
        for name, _ in list(plain.named_buffers()):  # the rotary tables: as computed, fp32
            owner_name, _, attr = name.rpartition(".")
            plain.get_submodule(owner_name)._buffers[attr] = live.get_buffer(name).detach().clone()
        plain.eval()
        packed = prepack_linears(plain)
        self._merges = [(w, lora, packed.get(id(w))) for w, lora, _ in self._merges]
        merged = len(self._merges)
        logger.info(
            "rollouts decode a %s copy of the policy, LoRA merged into %d layers, %d linear "
            "layers prepacked",
            dtype,
            merged,
            len(packed),
        )
        return plain


def _unmergeable(model: torch.nn.Module, adapter: str) -> str | None:
    """Why ``adapter`` cannot be merged exactly as ``W + scaling * B @ A``; None if it can."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return "peft is not installed"
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if not layers:
        return "no LoRA layers"
    for layer in layers:
        if adapter not in layer.lora_A:
            return f"a LoRA layer without adapter {adapter!r}"
        if (
            not isinstance(layer.base_layer, torch.nn.Linear)
            or type(layer.lora_A[adapter]) is not torch.nn.Linear
        ):
            return "LoRA on a layer other than nn.Linear"
        if getattr(layer, "fan_in_fan_out", False):
            return "LoRA with transposed weights (fan_in_fan_out)"
        if layer.use_dora.get(adapter, False):
            return "DoRA"
        if getattr(layer, "lora_bias", {}).get(adapter, False):
            return "LoRA with a bias"
        if layer.merged:
            return "an adapter already merged into the live weights"
    return None


def rollout_params(temperature: float, max_output_tokens: int, seed: int) -> GenerationParams:
    """How RL rollouts sample: the policy's whole distribution at ``temperature`` (no top-k or
    top-p cut, which would make the samples come from another policy than the one the loss
    scores), at most ``max_output_tokens``, seeded. Unchecked: the recipes' configs bound every
    field already."""
    return GenerationParams.model_construct(
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        max_output_tokens=max_output_tokens,
        seed=seed,
    )
