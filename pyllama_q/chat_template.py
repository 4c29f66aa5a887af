"""Chat templates: a list of {"role", "content"} messages -> one prompt string.

What it is: the Jinja2 template stored in a GGUF file (`tokenizer.chat_template`),
rendered in an immutable sandbox with the environment Hugging Face chat templates
expect (trim_blocks, lstrip_blocks, loop controls, `raise_exception`,
`strftime_now`, a `tojson` that does not HTML-escape, `bos_token`/`eos_token`,
`add_generation_prompt`); and four built-in templates (llama-2, llama-3, chatml,
alpaca) for files that carry none.
What it is not: tool-calling or multimodal message handling beyond passing
`tools`/`documents` through to the template.

Templates are untrusted code from model files: the sandbox forbids attribute
access to Python internals and mutation of the objects passed in.
"""
import json
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import FormatError, PQError


# --- built-in templates --------------------------------------------------------
# Written here from the published prompt formats; each also names its end-of-turn
# token and any extra stop strings.

LLAMA2 = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set sys = messages[0]['content'] %}{% set msgs = messages[1:] %}"
    "{% else %}{% set sys = none %}{% set msgs = messages %}{% endif %}"
    "{% for m in msgs %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('llama-2 chat needs user/assistant turns alternating, user first') }}"
    "{% endif %}"
    "{% if m['role'] == 'user' %}"
    "{% if loop.first and sys is not none %}"
    "{{ bos_token + '[INST] <<SYS>>\\n' + sys + '\\n<</SYS>>\\n\\n' + m['content'] | trim + ' [/INST]' }}"
    "{% else %}{{ bos_token + '[INST] ' + m['content'] | trim + ' [/INST]' }}{% endif %}"
    "{% else %}{{ ' ' + m['content'] | trim + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

LLAMA3 = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

CHATML = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

ALPACA = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{{ messages[0]['content'] + '\\n\\n' }}{% set msgs = messages[1:] %}"
    "{% else %}{{ 'Below is an instruction that describes a task. '"
    " 'Write a response that appropriately completes the request.\\n\\n' }}"
    "{% set msgs = messages %}{% endif %}"
    "{% for m in msgs %}"
    "{% if m['role'] == 'user' %}{{ '### Instruction:\\n' + m['content'] + '\\n\\n' }}"
    "{% elif m['role'] == 'assistant' %}{{ '### Response:\\n' + m['content'] + eos_token + '\\n\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
)

# name -> (source, end-of-turn token text or None for eos, extra stop strings)
BUILTIN = {
    "llama-2": (LLAMA2, None, ["[INST]"]),
    "llama-3": (LLAMA3, "<|eot_id|>", []),
    "chatml": (CHATML, "<|im_end|>", []),
    "alpaca": (ALPACA, None, ["### Instruction:"]),
}


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training
    masks in some templates; for inference it renders its body unchanged."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson HTML-escapes '<' '>' '&', which would change prompts.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


def _environment():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                       extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def guess_family(source):
    """Which prompt format a template string produces (for info and for the
    end-of-turn token): 'llama-3', 'chatml', 'llama-2', 'alpaca' or 'custom'."""
    if "<|start_header_id|>" in source:
        return "llama-3"
    if "<|im_start|>" in source:
        return "chatml"
    if "[INST]" in source:
        return "llama-2"
    if "### Instruction" in source:
        return "alpaca"
    return "custom"


class ChatTemplate:
    """A compiled template plus what generation needs to know about it.

    name          'chatml', 'llama-3', ... (family; for a file's own template, its guess)
    from_file     True when the template came from the model file
    end_of_turn   token text that ends an assistant turn (e.g. '<|im_end|>'), or None
    stop_strings  extra text that ends a turn in formats without a turn token
    """

    def __init__(self, source, name=None, bos_token="", eos_token="", from_file=False,
                 end_of_turn=None, stop_strings=()):
        self.source = source
        self.name = name or guess_family(source)
        self.bos_token = bos_token or ""
        self.eos_token = eos_token or ""
        self.from_file = from_file
        if end_of_turn is None and self.name in BUILTIN:
            end_of_turn = BUILTIN[self.name][1]
        self.end_of_turn = end_of_turn
        self.stop_strings = list(stop_strings)
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as e:
            where = "the model file's tokenizer.chat_template" if from_file else f"template {self.name}"
            raise FormatError(f"{where} is not valid Jinja: {e.message} (line {e.lineno})") from None

    @classmethod
    def builtin(cls, name, bos_token="", eos_token=""):
        if name not in BUILTIN:
            raise PQError(f"no built-in chat template {name!r}; known: {', '.join(BUILTIN)}")
        src, eot, stops = BUILTIN[name]
        return cls(src, name=name, bos_token=bos_token, eos_token=eos_token,
                   end_of_turn=eot, stop_strings=stops)

    def render(self, messages, add_generation_prompt=True, **extra):
        """The prompt text for `messages` (list of dicts with 'role' and 'content')."""
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise PQError(f"message {i} must be a dict with 'role' and 'content'")
        # tools/documents are always defined (as None when absent), as HF does:
        # templates test `tools is not none`, which is true for an undefined name.
        ctx = dict(bos_token=self.bos_token, eos_token=self.eos_token, tools=None, documents=None)
        ctx.update(extra)
        try:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         **ctx)
        except jinja2.TemplateError as e:
            raise PQError(f"chat template {self.name}: {e}") from None

    def __repr__(self):
        return f"ChatTemplate({self.name!r}, from_file={self.from_file})"


def choose_builtin(tokens, model_name=""):
    """Pick a built-in template from the vocabulary (list of token strings) and
    the model's name, for files without `tokenizer.chat_template`."""
    vocab = set(tokens or ())
    if "<|start_header_id|>" in vocab:
        return "llama-3"
    if "<|im_start|>" in vocab:
        return "chatml"
    name = (model_name or "").lower()
    if "[INST]" in vocab or ("llama" in name and "chat" in name) or "mistral" in name:
        return "llama-2"
    if "chatml" in name:
        return "chatml"
    return "alpaca"


def from_metadata(md, tokenizer=None, override=None):
    """The ChatTemplate for a model from its GGUF metadata dict.
    `override`: a built-in name, or a Jinja source string, to use instead."""
    tokens = md.get("tokenizer.ggml.tokens") or []

    def tok_text(key):
        i = md.get(key)
        if i is None:
            return ""
        i = int(i)
        if tokenizer is not None:
            try:
                return tokenizer.token_bytes(i).decode("utf-8", "replace")
            except Exception:
                pass
        return tokens[i] if 0 <= i < len(tokens) else ""

    bos, eos = tok_text("tokenizer.ggml.bos_token_id"), tok_text("tokenizer.ggml.eos_token_id")
    if override:
        if override in BUILTIN:
            return ChatTemplate.builtin(override, bos, eos)
        return ChatTemplate(override, bos_token=bos, eos_token=eos)
    src = md.get("tokenizer.chat_template")
    if isinstance(src, str) and src.strip():
        return ChatTemplate(src, bos_token=bos, eos_token=eos, from_file=True)
    return ChatTemplate.builtin(choose_builtin(tokens, md.get("general.name", "")), bos, eos)
