"""Work-dir files that survive `kill -9`, on a local disk or any `etils.epath`
filesystem (`gs://`): append-only JSONL results (labels, sweeps) and files written
whole (settings, tables, reports, figures).

A stage that produces one record per unit of work (a question's labels, a search
run on a problem) appends each batch of records with one write (`append_lines`), so a
kill leaves at most one cut last line. On restart `repair` drops that line and
returns the keys already done; the stage recomputes the rest. `pin_settings` keeps
a rerun with other settings from mixing two experiments in one file. Files written
whole go through `write_atomic` (`write_json`, `save_figure`): a reader sees the old
file or the new one, never half of one.

Paths stay strings (gin passes them so): `os.path.join` and `os.path.splitext` are
string operations and keep a `gs://bucket/dir` URI intact, while every touch of the
filesystem goes through `epath.Path`. `os.path.abspath` does not keep a URI:
`absolute` does.
"""

import io
import json
import os
from typing import Callable, Hashable, Optional, Sequence, Union

import tqdm
from etils import epath

from ttc.errors import UserError


REPAIR_HINT = "only a cut last line is repaired: fix or delete that line, or the file"


def is_local(path) -> bool:
  """Whether `path` is on a local disk (what `epath` does not reach through a URI
  scheme such as gs://)."""
  return "://" not in os.fspath(path)


def absolute(path: str) -> str:
  """`path` made absolute; a URI (gs://...) already is (`os.path.abspath` and
  `epath.Path.resolve` would make it a local path under the current directory)."""
  return os.path.abspath(path) if is_local(path) else path


def repair(path: str, parse: Callable[[bytes, int], dict], key: Callable[[dict], Hashable],
           hint: str) -> set:
  """Drops a last line cut by kill -9 (no newline, or not JSON); returns the keys present.

  parse(line, lineno) -> record, raising UserError for a bad line; key(record) names
  the unit of work. Any damage other than a cut last line (a bad line in the middle,
  a repeated key) is a UserError ending with `hint`: that is not what a kill does.
  """
  if not epath.Path(path).exists():
    return set()
  data = epath.Path(path).read_bytes()
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
    if is_local(path):
      with open(path, "r+b") as f:
        f.truncate(keep_bytes)
        f.flush()
        os.fsync(f.fileno())
    else:  # an object store has no truncate; its uploads replace an object whole
      epath.Path(path).write_bytes(data[:keep_bytes])
    print(f"{path}: dropped {len(data) - keep_bytes} bytes of a line cut by an earlier run")
  return keys


def read_records(path: str, parse: Callable[[bytes, int], dict], stage: str,
                 what: str = "results", key: Optional[Callable[[dict], Hashable]] = None,
                 hint: str = "") -> list[dict]:
  """Every record of a JSONL file that `stage` appends to, each line through
  parse(line, lineno); UserError if the file is missing or its last line is cut (a
  kill that `stage` repairs when rerun).

  key: names a record's unit of work in words (e.g. "uid q3"); a unit that repeats is
  a UserError ending with `hint` (default: rerun `stage`).
  """
  if not epath.Path(path).exists():
    raise UserError(f"{what} {path} not found; run {stage} first")
  lines = epath.Path(path).read_bytes().split(b"\n")
  if lines[-1]:
    raise UserError(f"{path} line {len(lines)} is cut mid-line; rerun {stage}")
  records, seen = [], {}
  for lineno, line in enumerate(lines[:-1], start=1):
    records.append(parse(line, lineno))
    if key is not None:
      unit = key(records[-1])
      if unit in seen:
        raise UserError(f"{path} line {lineno}: {unit} repeats line {seen[unit]}; "
                        f"{hint or f'rerun {stage}'}")
      seen[unit] = lineno
  return records


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
  """Appends records as JSON lines with one write.

  On a local disk the write is an append followed by fsync: a kill leaves at most a
  cut last line, which `repair` drops. An object store (gs://) cannot append, so there
  the file is rewritten whole: its old bytes and the new lines in one upload, which
  replaces the object all at once, so a kill leaves the file as it was. The trade-off:
  each call reads and writes the whole file, O(lines^2) bytes over a stage. That is
  fine for the files appended here, a chunk of problems at a time (labels, sweep
  results, at most MBs), and for a metrics log of a line per log_every steps; a file
  appended to per step would want part files instead.
  """
  data = "".join(json.dumps(r) + "\n" for r in records)
  if is_local(path):
    with open(path, "a") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
  else:
    target = epath.Path(path)
    target.write_bytes((target.read_bytes() if target.exists() else b"") + data.encode())


def write_atomic(path: str, data: Union[str, bytes]) -> None:
  """Writes `path` whole or not at all: into `<path>.tmp`, then renamed over `path`
  (on gs:// a copy; an upload alone is all or nothing there too). Creates the parent
  directory. With several processes only process 0 writes (`ttc.multihost`): these
  are the shared files, the same on every process."""
  from ttc import multihost  # jax: imported only when a file is written
  if not multihost.is_writer():
    return
  target = epath.Path(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = epath.Path(f"{path}.tmp")
  tmp.write_bytes(data.encode() if isinstance(data, str) else data)
  tmp.replace(target)


def write_json(path: str, value, indent: Optional[int] = 1) -> None:
  """`value` as a JSON file, written atomically."""
  write_atomic(path, json.dumps(value, indent=indent))


def save_figure(fig, path: str, dpi: int = 120) -> None:
  """A matplotlib figure as an image file (format from the suffix: .png, .pdf, .svg),
  written atomically; matplotlib itself writes only to local files."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format=os.path.splitext(path)[1][1:] or "png", dpi=dpi)
  write_atomic(path, buffer.getvalue())


def append_in_chunks(path: str, problems: Sequence, chunk_size: int, done: set,
                     compute: Callable[[int, list], list[dict]], desc: str) -> None:
  """Appends the records of `problems` not in `done`, `chunk_size` problems at a time.

  compute(chunk_index, chunk) -> one record per problem of the chunk (with its "uid"),
  called only for chunks with a problem not done; it should be a pure function of its
  arguments (e.g. draw from fold_in(key, chunk_index)), so a chunk cut by kill -9 is
  recomputed identically and only its missing records are appended.
  With several processes each computes the chunks it owns (`ttc.multihost.owns`) and
  `path` is its part file (`multihost.open_results`).
  """
  from ttc import multihost
  with tqdm.tqdm(total=len(problems), desc=desc, unit="question", disable=None) as progress:
    for chunk_index, start in enumerate(range(0, len(problems), chunk_size)):
      chunk = list(problems[start:start + chunk_size])
      if multihost.owns(chunk_index) and any(p.uid not in done for p in chunk):
        append_lines(path, [r for r in compute(chunk_index, chunk) if r["uid"] not in done])
      progress.update(len(chunk))


def settings_path(path: str) -> str:
  """Where the settings of the results file `path` are kept: `<name>.settings.json`."""
  return os.path.splitext(path)[0] + ".settings.json"


def read_settings(path: str) -> dict:
  """The settings the results file `path` was written with ({} if none were recorded)."""
  pinned = settings_path(path)
  if not epath.Path(pinned).exists():
    return {}
  try:
    return json.loads(epath.Path(pinned).read_text())
  except json.JSONDecodeError as e:
    raise UserError(f"cannot parse {pinned} ({e}); delete it and {path}, and rerun the "
                    "stage that wrote them") from None


def pin_settings(path: str, settings: dict, resuming: bool, rename_hint: str) -> None:
  """Records `settings` in `settings_path(path)`; on resume, they must match.

  rename_hint: how to start a separate file instead (e.g. the gin binding to change).
  """
  pinned = settings_path(path)
  if resuming and epath.Path(pinned).exists():
    before = read_settings(path)
    changed = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
    if changed:
      diff = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
      raise UserError(f"{path} was written with other settings ({diff}); delete it (and "
                      f"{pinned}) or {rename_hint}")
  write_json(pinned, settings)
