"""Hand-made results lines for the allocation tests: the right answers are known."""

import json


def uid(i: int) -> str:
  return f"q{i:02d}"


def line(i: int, method: str, budget: int, correct, **extra) -> dict:
  """One results line (`ttc.search.results` schema) of question i."""
  return {"uid": uid(i), "level": 1 + i % 5, "method": method, "budget": budget, "seed": 0,
          "rows": budget, "generations": budget, "answer": "1", "correct": bool(correct),
          "complete": budget, "tokens_generated": 10 * budget, "prm_tokens": 11 * budget,
          "rounds": 1, "wall_s": 0.0, "prm_overflowed": False, **extra}


def write(path, records) -> None:
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
