"""Shared fixtures: real tokenizers from the packaged GGUF files, and tiny random causal LMs built here.

The tiny models have random weights (no download) but real tokenizers and chat templates, so every
rendering and boundary case is exercised with real tokenization; their numbers mean nothing.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cdr.models import converted_dir, resolve_model

ROOT = Path(__file__).resolve().parent.parent


def _tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(converted_dir(resolve_model(name), "tokenizer")))


@pytest.fixture(scope="session")
def smol_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer: BPE, ChatML template that injects a default system prompt, no BOS."""
    return _tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def gemma_tokenizer():
    """gemma-3-270m base's tokenizer: SentencePiece-style, adds BOS, no chat template."""
    return _tokenizer("gemma-3-270m")


GEMMA_STYLE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@pytest.fixture(scope="session")
def gemma_templated_tokenizer(gemma_tokenizer):
    """gemma's tokenizer with a template that writes BOS into the text: the doubled-BOS trap."""
    tok = copy.deepcopy(gemma_tokenizer)
    tok.chat_template = GEMMA_STYLE_TEMPLATE
    return tok


def build_tiny_llama(tokenizer, path: Path, seed: int, **sizes) -> Path:
    """A random llama with ``tokenizer``; ``sizes`` override config fields (e.g. a larger head for vLLM)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        **{
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 1024,
            "tie_word_embeddings": False,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": None,
            **sizes,
        }
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_gemma3(tokenizer, path: Path, seed: int, **sizes) -> Path:
    """A random gemma-3 with ``tokenizer``; ``sizes`` override config fields."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        **{
            "vocab_size": len(tokenizer),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 8,
            "max_position_embeddings": 1024,
            "sliding_window": 16,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": 0,
            **sizes,
        }
    )
    model = Gemma3ForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_strong(tmp_path_factory, smol_tokenizer) -> Path:
    return build_tiny_llama(smol_tokenizer, tmp_path_factory.mktemp("tiny_strong"), seed=1)


@pytest.fixture(scope="session")
def tiny_weak(tmp_path_factory, gemma_tokenizer) -> Path:
    return build_tiny_gemma3(gemma_tokenizer, tmp_path_factory.mktemp("tiny_weak"), seed=2)


@pytest.fixture(scope="session")
def tiny_weak_fast(tmp_path_factory, smol_tokenizer) -> Path:
    """A second tiny llama on SmolLM2's tokenizer, for tests that start many processes: gemma's 262,144-word
    tokenizer (tiny_weak's) takes about 8 s to load in each one. Use tiny_weak where the second tokenizer matters."""
    return build_tiny_llama(smol_tokenizer, tmp_path_factory.mktemp("tiny_weak_fast"), seed=2)


@pytest.fixture(scope="session")
def tiny_pair(tiny_strong, tiny_weak):
    from cdr import DensityRatio

    return DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache="none")


def run_cdr(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """The real console entry point in a subprocess."""
    env = {**kwargs.pop("env", os.environ), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cdr.cli", *args], capture_output=True, text=True, timeout=timeout, env=env, **kwargs
    )


def eval_command(data: str, out, strong, weak, *extra: str) -> list[str]:
    """``cdr eval`` of a tiny pair on ``data`` into ``out``, computed afresh (no cache), with a short bootstrap."""
    return ["eval", data, "-o", str(out), "--strong", str(strong), "--weak", str(weak), "--cache", "none",
            "--bootstrap", "50", *extra]  # fmt: skip


def cdr_in_process(*args: str) -> subprocess.CompletedProcess:
    """The CLI's ``main`` in this process: the same parsing, output and exit code as ``run_cdr`` without an
    interpreter start-up (about 10 s here). For tests of what a run writes and says; kill -9, environment
    variables and the console script itself go through ``run_cdr``."""
    import io

    from cdr.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse ends a bad command line (and --help) this way
            code = exc.code
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def kill_9_after(args: list[str], state: Path, rows_done: int, timeout: float = 300) -> int:
    """Start ``cdr ARGS``, SIGKILL it once its state file records ``rows_done`` finished rows (or more),
    a few milliseconds later so the kill lands at varying points of the next chunk; returns rows done then."""
    import json
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "cdr.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(state.read_text())["rows_done"] >= rows_done:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.005)
    time.sleep(0.013 * rows_done % 0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return json.loads(state.read_text())["rows_done"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(reward, **settings):
    """A real server in a thread of this process, on a free loopback port, built as `cdr serve` builds it
    (uvicorn_server: the idle-connection timeout, the shutdown signal). Yields (url, port)."""
    import threading
    import time

    from cdr.serve.app import ServeSettings, create_app, uvicorn_server

    port = free_port()
    s = ServeSettings(port=port, **settings)
    server = uvicorn_server(create_app(reward, s), s, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", port
    finally:
        server.should_exit = True
        thread.join(30)


@contextlib.contextmanager
def running(reward, **settings):
    """``serving``, yielding the URL only."""
    with serving(reward, **settings) as (url, _):
        yield url


@contextlib.contextmanager
def serve_process(args: list[str], timeout: float = 120, **popen):
    """`cdr serve ARGS --port P` in its own process, yielded as (url, process) once /health answers 200."""
    import time

    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cdr.cli", "serve", "--port", str(port), *args], **popen)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            assert time.time() < deadline and proc.poll() is None, "server did not start"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            time.sleep(0.2)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(60)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path
