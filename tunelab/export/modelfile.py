"""An Ollama ``Modelfile`` beside a GGUF export: ``FROM`` the file, the chat template in Ollama's
Go-template form, the stop tokens and a default temperature.

Ollama does not run Jinja chat templates, so the template is rewritten for the one family we can
prove equivalent here: ChatML (``<|im_start|>role\\n...<|im_end|>``, SmolLM2, Qwen). The proof is
the model's own Jinja template, rendered: a conversation must come out as ChatML, and one with no
system message tells us the default system prompt the template inserts (SmolLM2's), which the
Go template then inserts too, so Ollama renders prompts exactly as TuneLab trained on them.
"""

from __future__ import annotations

import logging
import re

from tunelab.export.source import ExportError

logger = logging.getLogger(__name__)

DEFAULT_TEMPERATURE = 0.2
_PROBE = "TUNELAB-PROBE-7f3a"


def chatml_default_system(tokenizer) -> str | None:
    """The system prompt the template inserts when none is given (None: it inserts none).
    Raises ExportError when the template does not render ChatML."""
    plain = tokenizer.apply_chat_template(
        [{"role": "user", "content": _PROBE}], tokenize=False, add_generation_prompt=True
    )
    with_system = tokenizer.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": _PROBE}],
        tokenize=False,
        add_generation_prompt=True,
    )
    turn = f"<|im_start|>user\n{_PROBE}<|im_end|>\n<|im_start|>assistant\n"
    if with_system != f"<|im_start|>system\nS<|im_end|>\n{turn}":
        raise ExportError(
            "the chat template is not ChatML; write the Ollama TEMPLATE by hand for this model "
            f"(it renders {with_system[:120]!r})"
        )
    if plain == turn:
        return None
    match = re.fullmatch(r"<\|im_start\|>system\n(.*)<\|im_end\|>\n" + re.escape(turn), plain, re.S)
    if match is None:
        raise ExportError(f"unexpected rendering of a conversation without system: {plain!r}")
    return match.group(1)


def go_template(default_system: str | None) -> str:
    """Ollama's template for ChatML: the system turn (or the template's default), every
    other message (Ollama gives the system prompt as ``.System``, and system messages appear in
    ``.Messages`` too), then the assistant's opening."""
    fallback = (
        f"{{{{- else }}}}<|im_start|>system\n{default_system}<|im_end|>\n" if default_system else ""
    )
    return (
        "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n"
        f"{fallback}{{{{ end }}}}"
        '{{- range .Messages }}{{- if ne .Role "system" }}'
        "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}{{ end }}"
        "<|im_start|>assistant\n"
    )


def modelfile(
    gguf_name: str,
    tokenizer,
    *,
    adapter_name: str | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
) -> str:
    lines = [f"FROM ./{gguf_name}"]
    if adapter_name:
        lines.append(f"ADAPTER ./{adapter_name}")
    try:
        template = go_template(chatml_default_system(tokenizer))
    except ExportError as exc:
        # Not ChatML: Ollama then derives the template from the GGUF's tokenizer.chat_template
        # when it knows the family; say so rather than write a template we cannot check.
        logger.warning("Modelfile without TEMPLATE: %s", exc)
        lines.append("# TEMPLATE: not ChatML; Ollama reads the chat template from the GGUF")
    else:
        lines.append(f'TEMPLATE """{template}"""')
        lines += [f'PARAMETER stop "{s}"' for s in ("<|im_end|>", "<|im_start|>")]
    lines.append(f"PARAMETER temperature {temperature:g}")
    return "\n".join(lines) + "\n"
