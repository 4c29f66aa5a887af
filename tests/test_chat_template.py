"""Chat templates: our sandboxed rendering against transformers' renderer
(an independent implementation of the same Hugging Face template contract)."""
import json

import pytest

from pyllama_q import chat_template as ct
from pyllama_q.errors import PQError

hf = pytest.importorskip("transformers.utils.chat_template_utils")

CONVS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4"},
     {"role": "user", "content": "  And 3+3? <b>&</b> \u00e9t\u00e9 "}],
    [{"role": "user", "content": "One"},
     {"role": "assistant", "content": "Two"},
     {"role": "user", "content": "Three"}],
]


def hf_render(source, messages, add_generation_prompt, **kw):
    out, _ = hf.render_jinja_template([messages], chat_template=source,
                                      add_generation_prompt=add_generation_prompt, **kw)
    return out[0]


def check_same(t, messages, gen):
    ours = t.render(messages, add_generation_prompt=gen)
    ref = hf_render(t.source, messages, gen, bos_token=t.bos_token, eos_token=t.eos_token)
    assert ours == ref
    return ours


@pytest.mark.parametrize("name", sorted(ct.BUILTIN))
@pytest.mark.parametrize("conv", range(len(CONVS)))
@pytest.mark.parametrize("gen", [True, False])
def test_builtins_match_transformers(name, conv, gen):
    t = ct.ChatTemplate.builtin(name, bos_token="<s>", eos_token="</s>")
    check_same(t, CONVS[conv], gen)


def test_builtin_formats_written_out():
    msgs = CONVS[1]
    chatml = ct.ChatTemplate.builtin("chatml").render(msgs)
    assert chatml == ("<|im_start|>system\nYou are terse.<|im_end|>\n"
                      "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                      "<|im_start|>assistant\n4<|im_end|>\n"
                      "<|im_start|>user\n  And 3+3? <b>&</b> \u00e9t\u00e9 <|im_end|>\n"
                      "<|im_start|>assistant\n")
    l3 = ct.ChatTemplate.builtin("llama-3", bos_token="<|begin_of_text|>").render(msgs[:2])
    assert l3 == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\n")
    l2 = ct.ChatTemplate.builtin("llama-2", "<s>", "</s>").render(msgs)
    assert l2 == ("<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nWhat is 2+2? [/INST] 4 </s>"
                  "<s>[INST] And 3+3? <b>&</b> \u00e9t\u00e9 [/INST]")
    al = ct.ChatTemplate.builtin("alpaca", eos_token="</s>").render(CONVS[0])
    assert al.endswith("### Instruction:\nHi there\n\n### Response:\n")


def test_llama2_rejects_non_alternating():
    t = ct.ChatTemplate.builtin("llama-2", "<s>", "</s>")
    with pytest.raises(PQError, match="alternating"):
        t.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


# A template that uses the HF extras: namespace, loop controls, tojson with
# arguments, raise_exception, strftime_now, whitespace control, tools.
RICH = """
{%- set ns = namespace(n=0) -%}
{% for m in messages %}
  {% if m.role == 'system' %}{% continue %}{% endif %}
  {% set ns.n = ns.n + 1 %}
  [{{ ns.n }}:{{ m.role }}] {{ m.content | tojson }}
  {% if ns.n > 5 %}{% break %}{% endif %}
{% endfor %}
{% if tools is not none %}TOOLS {{ tools | tojson(indent=2, sort_keys=true) }}{% endif %}
{% if messages | length == 0 %}{{ raise_exception('no messages') }}{% endif %}
{{ strftime_now('%Y') | length }}
{% if add_generation_prompt %}>>{% endif %}
"""


@pytest.mark.parametrize("conv", range(len(CONVS)))
def test_rich_template_matches_transformers(conv):
    t = ct.ChatTemplate(RICH)
    check_same(t, CONVS[conv], True)
    tools = [{"name": "f", "parameters": {"b": "<x>", "a": 1}}]
    ours = t.render(CONVS[conv], tools=tools)
    assert ours == hf_render(RICH, CONVS[conv], True, tools=tools)
    assert '"<x>"' in ours  # not HTML-escaped


def test_raise_exception_becomes_pq_error():
    with pytest.raises(PQError, match="no messages"):
        ct.ChatTemplate(RICH).render([])


def test_sandbox_blocks_python_internals():
    t = ct.ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(Exception):
        t.render(CONVS[0])
    t = ct.ChatTemplate("{% set x = messages.append(1) %}")
    with pytest.raises(Exception):
        t.render(CONVS[0])


def test_bad_jinja_is_a_format_error():
    with pytest.raises(PQError, match="not valid Jinja"):
        ct.ChatTemplate("{% for %}", from_file=True)


def test_choose_builtin_from_vocab():
    assert ct.choose_builtin(["a", "<|start_header_id|>"]) == "llama-3"
    assert ct.choose_builtin(["<|im_start|>", "<|im_end|>"]) == "chatml"
    assert ct.choose_builtin(["<s>", "[INST]"]) == "llama-2"
    assert ct.choose_builtin(["<s>", "</s>"], "Llama 2 7B Chat") == "llama-2"
    assert ct.choose_builtin(["<s>", "</s>"], "open_llama") == "alpaca"


def test_from_metadata_prefers_file_template_then_builtin():
    md = {"tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "<|im_start|>"],
          "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2}
    t = ct.from_metadata(md)
    assert (t.name, t.from_file, t.bos_token, t.eos_token) == ("chatml", False, "<s>", "</s>")
    md["tokenizer.chat_template"] = "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"
    t = ct.from_metadata(md)
    assert t.from_file and t.render(CONVS[0]) == "<s>Hi there"
    assert ct.from_metadata(md, override="alpaca").name == "alpaca"


@pytest.mark.slow
def test_sample_model_template_matches_transformers(sample_model):
    gguf = pytest.importorskip("gguf")
    r = gguf.GGUFReader(sample_model)
    md = {k: f.contents() for k, f in r.fields.items()
          if k in ("tokenizer.chat_template", "tokenizer.ggml.bos_token_id",
                   "tokenizer.ggml.eos_token_id", "tokenizer.ggml.tokens", "general.name")}
    t = ct.from_metadata(md)
    assert t.from_file and t.name == "chatml" and t.end_of_turn == "<|im_end|>"
    for conv in CONVS:
        for gen in (True, False):
            out = check_same(t, conv, gen)
    assert out.startswith("<|im_start|>system\n")
