"""How TuneLab starts vLLM (``tunelab serve --engine vllm``), short of starting it: the real
start is tested in test_vllm_real.py."""

import argparse


def test_the_api_key_on_vllms_command_line_is_never_read_as_an_option(tmp_path):
    """vLLM parses ``--api-key`` with argparse (``nargs="+"``): a key starting with '-' is
    taken for an option and vLLM exits at start. Urlsafe base64 keys did so once in 64."""
    from tunelab.serving.vllm_process import VllmProcess

    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--api-key", nargs="+")
    for _ in range(300):
        process = VllmProcess(tmp_path)
        cmd = process.command()
        at = cmd.index("--api-key")
        known, _ = parser.parse_known_args(cmd[at : at + 2])
        assert known.api_key == [process.api_key]
