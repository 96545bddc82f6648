"""Character vocabulary for the arithmetic task: one id per character, 30 ids in all."""

import seqio
import tensorflow as tf

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
_NUM_SPECIAL = 3
# Everything arith.py emits. Order fixes the ids (id = 3 + index): append, never reorder, or
# trained checkpoints decode to the wrong characters.
ALPHABET = "0123456789+-*()=|\\boxed{}\n "


class CharVocabulary(seqio.Vocabulary):
  """0 = pad, 1 = eos, 2 = unk, then one id per character of ALPHABET.

  Characters outside the alphabet (any Unicode code point, not byte) encode to UNK_ID. Decoding
  follows seqio: ids after the first EOS are dropped by the base class, and pad/eos/unk ids
  (like seqio.ByteVocabulary) produce no text.
  """

  def __init__(self, alphabet: str = ALPHABET):
    if len(set(alphabet)) != len(alphabet) or any(ord(c) >= 128 for c in alphabet):
      raise ValueError(f"alphabet must be distinct ASCII characters, got {alphabet!r}")
    self._alphabet = alphabet
    self._char_to_id = {c: i + _NUM_SPECIAL for i, c in enumerate(alphabet)}
    # code point (< 128) -> id, for the TF path; everything else is UNK.
    self._ascii_to_id = [self._char_to_id.get(chr(cp), UNK_ID) for cp in range(128)]
    super().__init__(extra_ids=0)

  @property
  def alphabet(self) -> str:
    return self._alphabet

  @property
  def bos_id(self):
    return None

  @property
  def eos_id(self) -> int:
    return EOS_ID

  @property
  def unk_id(self) -> int:
    return UNK_ID

  @property
  def _base_vocab_size(self) -> int:
    return _NUM_SPECIAL + len(self._alphabet)

  def _encode(self, s) -> list:
    if isinstance(s, bytes):
      s = s.decode("utf-8", errors="replace")
    return [self._char_to_id.get(c, UNK_ID) for c in s]

  def _decode(self, ids) -> str:
    chars = []
    for i in ids:
      i = int(i)
      if _NUM_SPECIAL <= i < self._base_vocab_size:
        chars.append(self._alphabet[i - _NUM_SPECIAL])
    return "".join(chars)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """Scalar (or batched) tf.string -> int32 ids [length] (ragged [batch, None] if batched)."""
    # Decode code points, not bytes, so a multi-byte character is one UNK as in _encode.
    codepoints = tf.strings.unicode_decode(s, "UTF-8", errors="replace")
    table = tf.constant(self._ascii_to_id, tf.int32)

    def lookup(cps):
      in_table = tf.logical_and(cps >= 0, cps < 128)
      return tf.where(in_table, tf.gather(table, tf.clip_by_value(cps, 0, 127)), UNK_ID)

    if isinstance(codepoints, tf.RaggedTensor):
      return tf.ragged.map_flat_values(lookup, codepoints)
    return lookup(codepoints)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """int ids [..., length] -> tf.string [...]; the base class already blanked post-EOS ids."""
    ids = tf.cast(ids, tf.int32)
    strings = tf.constant([""] * _NUM_SPECIAL + list(self._alphabet))
    valid = tf.logical_and(ids >= 0, ids < self._base_vocab_size)
    chars = tf.gather(strings, tf.where(valid, ids, PAD_ID))
    return tf.strings.reduce_join(chars, axis=-1)

  def __eq__(self, other) -> bool:
    return isinstance(other, CharVocabulary) and self._alphabet == other._alphabet

  def __hash__(self) -> int:
    return hash((CharVocabulary, self._alphabet))


# seqio's decoder-only feature converters shift targets right and put id 0 first, so
# the model was trained to read every example after a leading 0; generation must too.
DECODER_START_ID = 0


def encode_prompt(prompt: str) -> list:
  """Token ids to feed a character-vocabulary policy for `prompt`, as training presented it."""
  return [DECODER_START_ID] + CharVocabulary().encode(prompt)


def output_features(vocabulary=None) -> dict:
  """seqio features of an SFT task: `inputs` is the prompt (no EOS: generation continues
  it); `targets` ends in EOS. `vocabulary`: default the character vocabulary."""
  vocabulary = vocabulary or CharVocabulary()
  return {
      "inputs": seqio.Feature(vocabulary, add_eos=False),
      "targets": seqio.Feature(vocabulary, add_eos=True),
  }
