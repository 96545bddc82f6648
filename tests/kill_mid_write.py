"""Runs the gin driver and SIGKILLs it halfway through its 2nd results write.

    subprocess.Popen([sys.executable, "-c", KILL_AT_SECOND_WRITE, *driver_flags])

`ttc.resumable.append_lines` is patched: the first write goes through; the second
writes one whole line and 20 bytes of the next, fsyncs, and kills the process, as
a `kill -9` landing mid-write would leave the file.
"""

KILL_AT_SECOND_WRITE = """
import json, os, signal, sys
from ttc import main, resumable

writes = []

def write_then_die(path, records):
  writes.append(path)
  if len(writes) < 2:
    return real(path, records)
  data = "".join(json.dumps(r) + "\\n" for r in records)
  with open(path, "a") as f:
    f.write(data[:data.index("\\n") + 1 + 20])  # one whole line, then 20 bytes of the next
    f.flush()
    os.fsync(f.fileno())
  os.kill(os.getpid(), signal.SIGKILL)

real, resumable.append_lines = resumable.append_lines, write_then_die
sys.exit(main.main(sys.argv[1:]))
"""
