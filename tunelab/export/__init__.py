"""Taking a tuned model out of TuneLab: ``export_model`` writes one of the formats below into a
folder, readable by the consumer's own library with no TuneLab code.

=========  ==============================================================================
peft       the adapter as PEFT and vLLM load it (adapter + tokenizer + chat template)
merged     base + adapter merged: a transformers safetensors folder (AutoModelForCausalLM);
           for an embedding model, a sentence-transformers folder
gguf       the merged model as GGUF (f16 or q8_0) for llama.cpp, with an Ollama Modelfile
gguf-lora  the adapter alone as llama.cpp's LoRA GGUF (``--lora``), with a Modelfile that
           puts it on the base model's GGUF (written beside it, same quantization)
=========  ==============================================================================
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.export.source import ExportError, ExportSource, source_for
from tunelab.serving.adapters import AdapterError

logger = logging.getLogger(__name__)

FORMATS = ("peft", "merged", "gguf", "gguf-lora")
QUANTIZATIONS = ("f16", "q8_0")


@dataclass
class ExportResult:
    model: str
    format: str
    quantization: str | None
    folder: Path
    files: list[str] = field(default_factory=list)


def export_model(
    services, ref: str, fmt: str, output: Path, quantization: str | None = None
) -> ExportResult:
    """Export tuned model ``ref`` (``name`` or ``name@version``) as ``fmt`` into ``output``
    (created; must be empty if it exists). Written to a temporary folder beside it first, so a
    failed export leaves no half-written folder."""
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if quantization is not None and fmt not in ("gguf", "gguf-lora"):
        raise ExportError(f"quantization applies to gguf formats, not {fmt!r}")
    quantization = quantization or ("f16" if fmt.startswith("gguf") else None)
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ExportError(f"quantization {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ExportError(f"output {output} exists and is not an empty folder")
    try:
        source = source_for(services, ref)
    except AdapterError as exc:  # e.g. a bundle whose base model is not the one registered
        raise ExportError(str(exc)) from None
    if source.method == "reward_model":
        raise ExportError(
            f"{source.label} is a reward model (an adapter with a scalar head): it is not exported"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        _write(source, fmt, quantization, tmp)
        if output.exists():
            output.rmdir()
        tmp.rename(output)
    except AdapterError as exc:  # a LoRA variant the engine (and so the export) cannot apply
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(str(exc)) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = sorted(p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file())
    logger.info("exported %s as %s to %s", source.label, fmt, output)
    return ExportResult(source.label, fmt, quantization, output, files)


def _write(source: ExportSource, fmt: str, quantization: str | None, out: Path) -> None:
    from tunelab.export.modelfile import modelfile

    if source.is_embedding:
        if fmt != "merged":
            raise ExportError(
                f"{source.label} is an embedding model: it exports as 'merged' (a "
                f"sentence-transformers folder), not as {fmt!r}"
            )
        from tunelab.export.embedding import write_sentence_transformers

        write_sentence_transformers(source, out)
        return
    if fmt == "peft":
        from tunelab.export.hf_folders import write_peft

        write_peft(source, out)
    elif fmt == "merged":
        from tunelab.export.hf_folders import write_merged

        write_merged(source, out)
    elif fmt == "gguf":
        from tunelab.export.gguf_model import write_gguf_model
        from tunelab.export.hf_folders import merged_model

        model, tokenizer = merged_model(source)
        name = f"{source.name}-v{source.version}-{quantization}.gguf"
        write_gguf_model(model, tokenizer, out / name, quantization, source.label)
        (out / "Modelfile").write_text(modelfile(name, tokenizer))
    else:  # gguf-lora: the adapter, and the base model's GGUF it applies to
        from tunelab.export.gguf_lora import write_gguf_lora
        from tunelab.export.gguf_model import write_gguf_model
        from tunelab.models import load_causal_lm, load_tokenizer

        adapter = f"{source.name}-v{source.version}-lora-{quantization}.gguf"
        write_gguf_lora(source, out / adapter, quantization)
        base = f"base-{quantization}.gguf"
        tokenizer = load_tokenizer(source.bundle)
        model = load_causal_lm(source.base.path)
        write_gguf_model(model, tokenizer, out / base, quantization, source.base.ref)
        (out / "Modelfile").write_text(modelfile(base, tokenizer, adapter_name=adapter))


__all__ = ["FORMATS", "QUANTIZATIONS", "ExportError", "ExportResult", "export_model"]
