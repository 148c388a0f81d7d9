"""The Ollama Modelfile: ChatML templates become Ollama's Go template (with the template's own
default system prompt when it inserts one); other templates are left to Ollama, said in a
comment, never guessed."""

from tunelab.export.modelfile import chatml_default_system, modelfile
from tunelab.models import load_tokenizer

PLAIN_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
NOT_CHATML = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


def test_smollm2_default_system_prompt_is_carried(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    default = chatml_default_system(tok)
    assert default.startswith("You are a helpful AI assistant named SmolLM")
    text = modelfile("m.gguf", tok, temperature=0.5)
    assert f"{{{{- else }}}}<|im_start|>system\n{default}<|im_end|>\n{{{{ end }}}}" in text
    assert '{{- if ne .Role "system" }}' in text  # system messages are not rendered twice
    assert text.rstrip().endswith("PARAMETER temperature 0.5")


def test_plain_chatml_has_no_default_and_other_templates_are_left_to_ollama(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    tok.chat_template = PLAIN_CHATML
    assert chatml_default_system(tok) is None
    text = modelfile("m.gguf", tok, adapter_name="a.gguf")
    assert text.startswith("FROM ./m.gguf\nADAPTER ./a.gguf\nTEMPLATE")
    assert "else" not in text and 'PARAMETER stop "<|im_end|>"' in text

    tok.chat_template = NOT_CHATML
    text = modelfile("m.gguf", tok)
    assert 'TEMPLATE """' not in text and "# TEMPLATE: not ChatML" in text
    assert "PARAMETER stop" not in text
