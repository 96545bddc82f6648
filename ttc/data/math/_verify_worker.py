"""The math-verify subprocess behind `ttc.data.math.grading.is_equiv`.

Run as a script (`python _verify_worker.py`), never imported. Protocol, one line each
way: the parent writes `[pred, ref, limit_s]` as JSON; the worker answers "1" (equal),
"0" (not equal), "t" (over limit_s seconds) or "e" (math-verify raised). Its first line
is "ready", or "unavailable: REASON" when math-verify cannot be imported. It exits at EOF.

Why a process: sympy can spend minutes (or gigabytes) on answers like `9^{9^{9^9}}`
or `(1+x)^{1000}`; only a process can be killed whatever it is doing and whichever
thread of the parent asked. Inside it, this process's own main thread bounds each
comparison with an interval timer, so a slow comparison costs limit_s and no restart;
the parent kills the process only when that timer did not get through.
"""

import json
import signal
import sys

# This file's folder holds modules named `grading` and `dataset`; keep them from
# shadowing anything sympy or math-verify imports.
del sys.path[0]

MEMORY_LIMIT_BYTES = 3 << 30  # a runaway big integer raises MemoryError, not swap


class _SoftTimeout(BaseException):
  """Raised by the timer. A BaseException, so math-verify's `except Exception` blocks,
  which turn errors into a False and move on to the next candidate pair, let it pass."""


def _on_alarm(signum, frame):
  del signum, frame
  raise _SoftTimeout()


def _reply(text: str) -> None:
  sys.stdout.write(text + "\n")
  sys.stdout.flush()


def _compare(parse, verify, pred: str, ref: str) -> bool:
  # math-verify's own timeouts are off (None): they use signal.alarm, whole seconds per
  # parse and per candidate pair, so one comparison could take many seconds; the
  # caller's timer bounds the whole comparison instead. first_match: the whole answer
  # is compared, not a number found inside it when the whole does not parse (`=6b`).
  gold = parse(f"\\boxed{{{ref}}}", extraction_mode="first_match", parsing_timeout=None)
  target = parse(f"\\boxed{{{pred}}}", extraction_mode="first_match", parsing_timeout=None)
  return verify(gold, target, timeout_seconds=None)


def main() -> None:
  try:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
  except (ImportError, ValueError, OSError):
    pass  # a limit is a safeguard, not a requirement
  try:
    import logging
    # With their own timeouts off (`_compare`) both libraries warn once, math-verify
    # logs each failed parse; the parent reports what matters.
    for name in ("math_verify", "latex2sympy2_extended"):
      logging.getLogger(name).setLevel(logging.CRITICAL)
    from math_verify import parse, verify
    # Lazy imports and grammar loading happen here, not in the first timed comparison.
    _compare(parse, verify, "\\{1,\\frac{x}{2}\\}", "(1, 2]")
  except Exception as e:  # pylint: disable=broad-except
    _reply(f"unavailable: {type(e).__name__}: {e}".replace("\n", " "))
    return
  signal.signal(signal.SIGALRM, _on_alarm)
  _reply("ready")
  for line in sys.stdin:
    try:
      try:
        pred, ref, limit_s = json.loads(line)
        signal.setitimer(signal.ITIMER_REAL, limit_s)
        answer = "1" if _compare(parse, verify, pred, ref) else "0"
      finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    except _SoftTimeout:
      answer = "t"
    except Exception:  # pylint: disable=broad-except
      answer = "e"
    _reply(answer)


if __name__ == "__main__":
  main()
