"""ttc/resumable.py: strict reading of append-only result files, and chunked appending
that skips what a killed run already wrote."""

import dataclasses
import json

import pytest

from ttc import resumable
from ttc.errors import UserError


def _parse(line, lineno):
  return {**json.loads(line), "lineno": lineno}


def test_read_records_parses_every_line_and_names_the_stage_on_damage(tmp_path):
  path = tmp_path / "results.jsonl"
  with pytest.raises(UserError, match=r"chains .*results.jsonl not found; run my_sweep first"):
    resumable.read_records(str(path), _parse, "my_sweep", "chains")
  resumable.append_lines(str(path), [{"uid": "a"}, {"uid": "b"}])
  assert resumable.read_records(str(path), _parse, "my_sweep") == [
      {"uid": "a", "lineno": 1}, {"uid": "b", "lineno": 2}]
  path.write_bytes(path.read_bytes() + b'{"uid": "c"')  # a write cut by kill -9
  with pytest.raises(UserError, match=r"line 3 is cut mid-line; rerun my_sweep"):
    resumable.read_records(str(path), _parse, "my_sweep")


@dataclasses.dataclass
class _Problem:
  uid: str


def test_append_in_chunks_computes_only_chunks_with_missing_problems(tmp_path):
  path = str(tmp_path / "out.jsonl")
  problems = [_Problem(f"p{i}") for i in range(7)]
  calls = []

  def compute(index, chunk):
    calls.append((index, [p.uid for p in chunk]))
    return [{"uid": p.uid, "chunk": index} for p in chunk]

  # p0-p2 (chunk 0) and p4 (chunk 1) are done: chunk 1 is recomputed for p3 and p5 only.
  resumable.append_in_chunks(path, problems, 3, {"p0", "p1", "p2", "p4"}, compute, "")
  assert calls == [(1, ["p3", "p4", "p5"]), (2, ["p6"])]
  with open(path) as f:
    assert [json.loads(line) for line in f] == [
        {"uid": "p3", "chunk": 1}, {"uid": "p5", "chunk": 1}, {"uid": "p6", "chunk": 2}]


def test_parse_record_names_the_file_line_and_missing_keys():
  assert resumable.parse_record(b'{"a": 1, "b": 2}', "f.jsonl", 3, ("a", "b")) == {"a": 1, "b": 2}
  with pytest.raises(UserError, match=r"f.jsonl line 3 lacks \['b'\]; only a cut last line"):
    resumable.parse_record(b'{"a": 1}', "f.jsonl", 3, ("a", "b"))
  with pytest.raises(UserError, match=r"f.jsonl line 4 lacks \['a'\]; fix it"):
    resumable.parse_record(b'[1, 2]', "f.jsonl", 4, ("a",), "fix it")
