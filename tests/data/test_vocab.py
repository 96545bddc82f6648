"""Tests for ttc/data/vocab.py: ids, python/TF agreement, seqio decode semantics."""

import tensorflow as tf

from ttc.data import arith
from ttc.data import vocab

TEXT = arith.format_prompt("(17+25)*3-8") + (
    "17+25=42|42*3-8\n42*3=126|126-8\n126-8=118|118\n\\boxed{118}")


def test_special_ids_and_size():
  v = vocab.CharVocabulary()
  assert (v.pad_id, v.eos_id, v.unk_id) == (0, 1, 2)
  assert v.vocab_size == 3 + len(vocab.ALPHABET) < 40
  assert v.encode("0") == [3]


def test_alphabet_covers_task_output():
  v = vocab.CharVocabulary()
  for p in arith.generate_split("validation", 5):
    assert v.unk_id not in v.encode(p.prompt + p.solution)


def test_round_trip_python_and_tf_agree():
  v = vocab.CharVocabulary()
  ids = v.encode(TEXT)
  assert v.decode(ids) == TEXT
  tf_ids = v.encode_tf(tf.constant(TEXT)).numpy().tolist()
  assert tf_ids == ids
  assert v.decode_tf(tf.constant(ids)).numpy().decode() == TEXT


def test_unknown_characters_python_and_tf_agree():
  v = vocab.CharVocabulary()
  text = "1+a\té2"  # é is two UTF-8 bytes but one character -> one UNK
  ids = v.encode(text)
  assert ids == [4, 13, 2, 2, 2, 5]
  assert v.encode_tf(tf.constant(text)).numpy().tolist() == ids
  assert v.decode(ids) == "1+2"


def test_batched_encode_tf_is_ragged():
  v = vocab.CharVocabulary()
  out = v.encode_tf(tf.constant(["12", "3"]))
  assert out.to_list() == [v.encode("12"), v.encode("3")]


def test_decode_stops_at_eos_and_skips_pad():
  v = vocab.CharVocabulary()
  ids = v.encode("12") + [v.eos_id] + v.encode("34") + [0, 0]
  assert v.decode(ids) == "12"
  assert v.decode([0] + v.encode("5") + [0]) == "5"
  batch = tf.constant([ids, v.encode("9") + [0] * (len(ids) - 1)])
  assert [s.decode() for s in v.decode_tf(batch).numpy()] == ["12", "9"]


def test_equality_and_hash():
  assert vocab.CharVocabulary() == vocab.CharVocabulary()
  assert hash(vocab.CharVocabulary()) == hash(vocab.CharVocabulary())
  assert vocab.CharVocabulary() != vocab.CharVocabulary("01")
