"""Text <-> token ids for open checkpoints: from GGUF metadata or an HF `tokenizer.json`.

`TextTokenizer` wraps a `tokenizers.Tokenizer` with the ids and chat template the
samplers need. Chat templates are rendered with jinja2 as HF does; without jinja2 a
minimal ChatML renderer covers the SmolLM2 / Qwen2 style templates.
"""

import dataclasses
import json
import os
from typing import Optional, Sequence

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from ttc.errors import UserError

_GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3_PATTERN = _QWEN2_PATTERN.replace(r"|\p{N}|", r"|\p{N}{1,3}|")

# GGUF `tokenizer.ggml.pre` -> the HF pre-tokenizer llama.cpp mirrors for it.
_PRE_TOKENIZERS = {
    "default": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False),
    "gpt-2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False),
    # StarCoder-style vocabularies split every digit on its own first.
    **{name: lambda: pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)]) for name in (
            "smollm", "starcoder", "refact")},
    "qwen2": lambda: pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
    "llama-bpe": lambda: pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
}

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


@dataclasses.dataclass
class TextTokenizer:
  """A `tokenizers.Tokenizer` plus special ids and the chat template."""

  tokenizer: Tokenizer
  bos_id: Optional[int]
  eos_id: Optional[int]
  chat_template: Optional[str] = None

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    ids = self.tokenizer.encode(text, add_special_tokens=False).ids
    if add_bos:
      if self.bos_id is None:
        raise UserError("add_bos=True but the tokenizer has no bos token")
      ids = [self.bos_id] + ids
    return ids

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def token(self, token_id: int) -> Optional[str]:
    return self.tokenizer.id_to_token(int(token_id))

  def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True
                          ) -> str:
    """The prompt text for `messages` ([{"role": ..., "content": ...}]), as HF renders it."""
    if self.chat_template is None:
      return _chatml(messages, add_generation_prompt)
    try:
      import jinja2  # pylint: disable=g-import-not-at-top
      from jinja2 import sandbox  # pylint: disable=g-import-not-at-top
    except ImportError:
      return _chatml(messages, add_generation_prompt)

    def raise_exception(message):
      raise UserError(f"chat template: {message}")

    env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    try:
      template = env.from_string(self.chat_template)
    except jinja2.TemplateError as e:
      raise UserError(f"chat template does not parse: {e}") from None
    special = lambda i: self.token(i) if i is not None else ""
    return template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                           bos_token=special(self.bos_id), eos_token=special(self.eos_id))


def _chatml(messages, add_generation_prompt: bool) -> str:
  """ChatML as SmolLM2's template writes it (its default system prompt included)."""
  text = ""
  if messages and messages[0]["role"] != "system":
    text += ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
             "Hugging Face<|im_end|>\n")
  for m in messages:
    text += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
  if add_generation_prompt:
    text += "<|im_start|>assistant\n"
  return text


def tokenizer_from_gguf(reader) -> TextTokenizer:
  """Rebuild the BPE tokenizer stored in a `gguf.GGUFReader`'s metadata."""
  def field(key):
    f = reader.get_field(key)
    return None if f is None else f.contents()

  kind = field("tokenizer.ggml.model")
  if kind is None:
    raise UserError("the GGUF file has no tokenizer (tokenizer.ggml.model missing); "
                    "use a GGUF converted with its tokenizer")
  if kind != "gpt2":
    raise UserError(f"GGUF tokenizer model {kind!r} is not supported (only gpt2 BPE)")
  pre = field("tokenizer.ggml.pre") or "default"
  if pre not in _PRE_TOKENIZERS:
    raise UserError(f"GGUF pre-tokenizer {pre!r} is not supported; known: "
                    f"{', '.join(sorted(_PRE_TOKENIZERS))}")
  tokens = field("tokenizer.ggml.tokens")
  merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges") or []]
  types = field("tokenizer.ggml.token_type") or [1] * len(tokens)

  tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                             fuse_unk=False, byte_fallback=False))
  tok.pre_tokenizer = _PRE_TOKENIZERS[pre]()
  tok.decoder = decoders.ByteLevel()
  # Control tokens (<|im_start|>...) must match whole, before BPE splits them.
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                          for t, ty in zip(tokens, types) if ty == _CONTROL])
  tok.add_tokens([AddedToken(t, special=False, normalized=False)
                  for t, ty in zip(tokens, types) if ty == _USER_DEFINED])
  return TextTokenizer(tok, field("tokenizer.ggml.bos_token_id"),
                       field("tokenizer.ggml.eos_token_id"), field("tokenizer.chat_template"))


def tokenizer_from_hf(directory: str) -> TextTokenizer:
  """From an HF checkpoint directory: `tokenizer.json` (+ `tokenizer_config.json`)."""
  path = os.path.join(directory, "tokenizer.json")
  if not os.path.exists(path):
    raise UserError(f"{path} not found; download the checkpoint's tokenizer.json "
                    "(sentencepiece-only tokenizers are not supported)")
  try:
    tok = Tokenizer.from_file(path)
  except Exception as e:  # tokenizers raises a bare Exception on bad JSON.
    raise UserError(f"cannot read {path} ({e}); download it again") from None

  def load(name):
    p = os.path.join(directory, name)
    if not os.path.exists(p):
      return {}
    with open(p) as f:
      return json.load(f)

  tok_config, model_config = load("tokenizer_config.json"), load("config.json")

  def special_id(key):
    token = tok_config.get(key)
    if isinstance(token, dict):
      token = token.get("content")
    if token is not None and tok.token_to_id(token) is not None:
      return tok.token_to_id(token)
    return model_config.get(f"{key}_id")

  template = tok_config.get("chat_template")
  if isinstance(template, list):  # Named templates: take the default one.
    template = next((t["template"] for t in template if t.get("name") == "default"), None)
  return TextTokenizer(tok, special_id("bos_token"), special_id("eos_token"), template)
