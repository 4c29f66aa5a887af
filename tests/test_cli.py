"""The pyllama-q command as a user runs it: subprocesses, pipes and a
pseudo-terminal (pexpect)."""
import os
import signal
import subprocess
import sys
import time

import pytest

CMD = [sys.executable, "-m", "pyllama_q"]


def run(*args, input=None, timeout=300):
    return subprocess.run(CMD + list(args), input=input, capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(r, code, *words):
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyllama-q: error: "), r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0]


def test_missing_file_is_one_line_error(tmp_path):
    p = str(tmp_path / "missing.gguf")
    for sub in (["chat", p], ["generate", p, "-p", "hi"], ["info", p]):
        one_line_error(run(*sub), 1, "missing.gguf")


def test_not_a_gguf_is_one_line_error(tmp_path):
    p = tmp_path / "junk.gguf"
    p.write_bytes(b"not a model at all" * 10)
    one_line_error(run("info", str(p)), 1, "junk.gguf")
    one_line_error(run("generate", str(p), "-p", "x"), 1, "junk.gguf")


def test_usage_errors_exit_2_in_one_line():
    one_line_error(run("generate"), 2)
    one_line_error(run("chat", "x.gguf", "--top-k", "many"), 2, "--top-k")
    one_line_error(run("frobnicate"), 2, "frobnicate")


def test_help_lists_commands():
    r = run("--help")
    assert r.returncode == 0
    for c in ("sample", "chat", "generate", "info", "convert"):
        assert c in r.stdout


@pytest.mark.slow
def test_sample_prints_the_cached_path(sample_model):
    r = run("sample")
    assert r.returncode == 0 and r.stdout.strip() == sample_model


@pytest.mark.slow
def test_info_prints_kernels_and_model_facts(sample_model):
    import pyllama_q

    r = run("info", sample_model)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "architecture:  llama" in out and "n_layer:" in out and "30" in out
    assert "MOSTLY_Q4_1" in out and "Q4_1 x" in out
    assert "chat template: chatml (from file)" in out
    assert f"kernels:       {pyllama_q.cpu_info()['kernels']}" in out
    import json
    r = run("info", sample_model, "--json")
    d = json.loads(r.stdout)
    assert d["hparams"]["n_head_kv"] == 3 and d["n_tensors"] == 272
    assert d["kernels"]["kernels"] == pyllama_q.cpu_info()["kernels"]


# --- with the real model (needs the forward pass and tokenizer) ------------------------------

# See test_api.py: with the template's default system prompt this Q4_1 model
# answers off topic in llama.cpp too; with this one llama.cpp says "Paris".
SYSTEM = ["--system", "You are a helpful AI assistant."]


@pytest.fixture(scope="module")
def runnable(sample_model):
    pytest.importorskip("pyllama_q.model")
    pytest.importorskip("pyllama_q.tokenizer")
    return sample_model


@pytest.mark.slow
def test_generate_streams_greedy_text(runnable):
    r = run("generate", runnable, "-p", "The capital of France is", "-n", "8", "--temp", "0")
    assert r.returncode == 0, r.stderr
    r2 = run("generate", runnable, "-p", "The capital of France is", "-n", "8", "--temp", "0")
    assert r.stdout == r2.stdout and r.stdout.strip()
    assert "tok/s" in r.stderr


@pytest.mark.slow
def test_chat_through_a_pipe(runnable):
    r = run("chat", runnable, "--temp", "0", "-n", "48", *SYSTEM,
            input="What is the capital of France?\n")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert ">" not in r.stdout.splitlines()[0]  # no prompt clutter when piped
    assert "tok/s" in r.stderr


@pytest.mark.slow
def test_chat_on_a_terminal_with_ctrl_c(runnable):
    pexpect = pytest.importorskip("pexpect")
    # -n 400: the interrupted reply must still be running when Ctrl-C comes
    # (48 tokens took only 0.6 s here once decode got faster).
    child = pexpect.spawn(sys.executable, ["-m", "pyllama_q", "chat", runnable, "--temp", "0",
                                           "-n", "400", *SYSTEM], encoding="utf-8", timeout=120,
                          dimensions=(40, 200))
    try:
        child.expect("/help")
        child.expect("> ")
        child.sendline("What is the capital of France?")
        child.expect(r"tok/s")
        assert "Paris" in child.before
        child.expect("> ")
        # a long reply, interrupted: back at the prompt, program alive
        child.sendline("/reset")
        child.expect("reset")
        child.expect("> ")
        child.sendline("Write a very long story about a dragon, at least 2000 words.")
        child.expect("2000 words.")     # the terminal's echo of the line
        child.expect(r"\w")             # the first letters of the reply
        time.sleep(0.2)
        child.kill(signal.SIGINT)
        child.expect(r"interrupted")
        child.expect("> ")
        child.sendline("/help")
        child.expect("/exit")
        child.expect("> ")
        child.kill(signal.SIGINT)  # Ctrl-C at the prompt drops the line, keeps the chat
        child.expect("to quit")
        child.expect("> ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


@pytest.mark.slow
def test_generate_into_a_closed_pipe_exits_quietly(runnable):
    # like `pyllama-q generate ... | head -c 10`: the reader leaves mid-stream
    p = subprocess.Popen(CMD + ["generate", runnable, "-p", "Hi", "-n", "300", "--seed", "3"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(10)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0, err
    assert "Traceback" not in err


@pytest.mark.slow
def test_generate_sigint_stops_with_status_130(runnable):
    p = subprocess.Popen(CMD + ["generate", runnable, "-p", "Write a long story:", "-n", "2000",
                                "--seed", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    p.stdout.read(40)  # it is generating
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
