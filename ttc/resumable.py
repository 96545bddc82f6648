"""Append-only JSONL result files that survive `kill -9` (labels, sweeps).

A stage that produces one record per unit of work (a question's labels, a search
run on a problem) appends each batch of records with one write and an fsync, so a
kill leaves at most one cut last line. On restart `repair` drops that line and
returns the keys already done; the stage recomputes the rest. `pin_settings` keeps
a rerun with other settings from mixing two experiments in one file.
"""

import json
import os
from typing import Callable, Hashable, Sequence

import tqdm

from ttc.errors import UserError


REPAIR_HINT = "only a cut last line is repaired: fix or delete that line, or the file"


def repair(path: str, parse: Callable[[bytes, int], dict], key: Callable[[dict], Hashable],
           hint: str) -> set:
  """Drops a last line cut by kill -9 (no newline, or not JSON); returns the keys present.

  parse(line, lineno) -> record, raising UserError for a bad line; key(record) names
  the unit of work. Any damage other than a cut last line (a bad line in the middle,
  a repeated key) is a UserError ending with `hint`: that is not what a kill does.
  """
  if not os.path.exists(path):
    return set()
  with open(path, "rb") as f:
    data = f.read()
  lines = data.split(b"\n")
  keys, keep_bytes = set(), 0
  for lineno, line in enumerate(lines[:-1], start=1):
    try:
      json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
      if lineno == len(lines) - 1 and not lines[-1]:
        break  # the last line: newline written, JSON cut (or garbage) before it
    record = parse(line, lineno)
    if key(record) in keys:
      raise UserError(f"{path} line {lineno}: {key(record)} repeats; {hint}")
    keys.add(key(record))
    keep_bytes += len(line) + 1
  if keep_bytes < len(data):
    with open(path, "r+b") as f:
      f.truncate(keep_bytes)
      f.flush()
      os.fsync(f.fileno())
    print(f"{path}: dropped {len(data) - keep_bytes} bytes of a line cut by an earlier run")
  return keys


def read_records(path: str, parse: Callable[[bytes, int], dict], stage: str,
                 what: str = "results") -> list[dict]:
  """Every record of a JSONL file that `stage` appends to, each line through
  parse(line, lineno); UserError if the file is missing or its last line is cut (a
  kill that `stage` repairs when rerun)."""
  if not os.path.exists(path):
    raise UserError(f"{what} {path} not found; run {stage} first")
  with open(path, "rb") as f:
    lines = f.read().split(b"\n")
  if lines[-1]:
    raise UserError(f"{path} line {len(lines)} is cut mid-line; rerun {stage}")
  return [parse(line, n) for n, line in enumerate(lines[:-1], start=1)]


def parse_json_line(line: bytes, path: str, lineno: int, hint: str):
  """The JSON value of one line; UserError naming the file, the 1-based line and `hint`."""
  try:
    return json.loads(line)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f"{path} line {lineno} is cut or not valid JSON ({e}); {hint}") from e


def parse_record(line: bytes, path: str, lineno: int, fields: Sequence[str],
                 hint: str = REPAIR_HINT) -> dict:
  """One line of a results file: a JSON object with every key of `fields`; UserError
  naming the file, the line and what it lacks otherwise."""
  record = parse_json_line(line, path, lineno, hint)
  missing = [k for k in fields if not isinstance(record, dict) or k not in record]
  if missing:
    raise UserError(f"{path} line {lineno} lacks {missing}; {hint}")
  return record


def append_lines(path: str, records: list[dict]) -> None:
  """Appends records with one write, then fsync: a kill leaves at most a cut last line."""
  data = "".join(json.dumps(r) + "\n" for r in records)
  with open(path, "a") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def append_in_chunks(path: str, problems: Sequence, chunk_size: int, done: set,
                     compute: Callable[[int, list], list[dict]], desc: str) -> None:
  """Appends the records of `problems` not in `done`, `chunk_size` problems at a time.

  compute(chunk_index, chunk) -> one record per problem of the chunk (with its "uid"),
  called only for chunks with a problem not done; it should be a pure function of its
  arguments (e.g. draw from fold_in(key, chunk_index)), so a chunk cut by kill -9 is
  recomputed identically and only its missing records are appended.
  """
  with tqdm.tqdm(total=len(problems), desc=desc, unit="question", disable=None) as progress:
    for chunk_index, start in enumerate(range(0, len(problems), chunk_size)):
      chunk = list(problems[start:start + chunk_size])
      if any(p.uid not in done for p in chunk):
        append_lines(path, [r for r in compute(chunk_index, chunk) if r["uid"] not in done])
      progress.update(len(chunk))


def settings_path(path: str) -> str:
  """Where the settings of the results file `path` are kept: `<name>.settings.json`."""
  return os.path.splitext(path)[0] + ".settings.json"


def read_settings(path: str) -> dict:
  """The settings the results file `path` was written with ({} if none were recorded)."""
  pinned = settings_path(path)
  if not os.path.exists(pinned):
    return {}
  with open(pinned) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise UserError(f"cannot parse {pinned} ({e}); delete it and {path}, and rerun the "
                      "stage that wrote them") from None


def pin_settings(path: str, settings: dict, resuming: bool, rename_hint: str) -> None:
  """Records `settings` in `settings_path(path)`; on resume, they must match.

  rename_hint: how to start a separate file instead (e.g. the gin binding to change).
  """
  pinned = settings_path(path)
  if resuming and os.path.exists(pinned):
    before = read_settings(path)
    changed = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
    if changed:
      diff = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
      raise UserError(f"{path} was written with other settings ({diff}); delete it (and "
                      f"{pinned}) or {rename_hint}")
  tmp = pinned + ".tmp"
  with open(tmp, "w") as f:
    json.dump(settings, f, indent=1)
  os.replace(tmp, pinned)
