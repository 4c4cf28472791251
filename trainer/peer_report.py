"""Relay of a training process's stderr (see tessera.trainer.distributed._relay_stderr): passes every line on, and
when JAX's fatal dump reported dead peers, ends the stream with one line naming them. Runs without JAX.

  python -m tessera.trainer.peer_report NUM_PROCESSES HEARTBEAT_SECONDS PROCESS_ID  < stderr-of-the-process
"""
import re
import sys

DEAD = re.compile(r"stopped sending heartbeats\)?:\s*$")


def main(argv):
  num_processes, heartbeat, me = argv
  dead, listing = [], False
  out = sys.stdout.buffer
  for raw in sys.stdin.buffer:
    out.write(raw)
    out.flush()
    line = raw.decode("utf-8", "replace").strip()
    if listing and re.fullmatch(r"[\d, ]+", line):
      dead += [d for d in re.split(r"[, ]+", line) if d and d not in dead]
      continue
    listing = bool(DEAD.search(line))
  if dead:
    who = "process " + ", ".join(dead) if len(dead) == 1 else "processes " + ", ".join(dead)
    out.write(f"error: {who} of {num_processes} died (no heartbeat within TESSERA_HEARTBEAT_TIMEOUT={heartbeat}s); "
              f"process {me} stopped\n".encode())
    out.flush()
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
