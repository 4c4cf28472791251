#!/usr/bin/env python3
"""N real JAX processes on this machine, each with M fake CPU devices: multi-host behaviour without a cluster.

  launch/local.py --processes 2 --devices-per-process 4 -- --config configs/lm.py:tiny --workdir runs/x
  launch/local.py --processes 2 --devices-per-process 4 -- eval --workdir runs/x

Everything after `--` goes to `python -m tessera.trainer`. Each process gets TESSERA_COORDINATOR (a free localhost
port), TESSERA_NUM_PROCESSES, TESSERA_PROCESS_ID and its fake device count; its output lines are prefixed `[pI]`.
A watchdog stops the others (SIGTERM, then SIGKILL after --grace seconds) as soon as one exits non-zero, and
everyone after --timeout seconds. Exit code: 0 if all succeed, else the first failure's code (124 on timeout).
"""
import argparse
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


def _reexec_in_venv():
  """`launch/local.py` run by a system python: continue in the project's venv (which has tessera and jax)."""
  if VENV_PYTHON.exists() and pathlib.Path(sys.prefix).resolve() != VENV_PYTHON.parents[1].resolve():
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), __file__, *sys.argv[1:]])


def say(message):
  print(f"launch/local.py: {message}", file=sys.stderr, flush=True)


def process_env(i, n, devices, coordinator, base=None):
  """The environment of process i: the join variables and M fake CPU devices (replacing any device-count flag)."""
  env = dict(os.environ if base is None else base)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
  env.update(
      TESSERA_COORDINATOR=coordinator, TESSERA_NUM_PROCESSES=str(n), TESSERA_PROCESS_ID=str(i),
      JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count={devices}"]),
      PYTHONUNBUFFERED="1")
  return env


def _pump(stream, prefix, sink):
  for line in iter(stream.readline, ""):
    sink.write(prefix + line)
    sink.flush()
  stream.close()


def _describe(code):
  return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"


def supervise(commands, envs, timeout=None, grace=5.0, poll=0.1):
  """Runs commands[i] with envs[i], prefixing output; the watchdog policy above. Returns the exit code."""
  procs, pumps, first_failure = [], [], None
  for i, (command, env) in enumerate(zip(commands, envs)):
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            bufsize=1, start_new_session=True)  # own process group: grain workers go with it
    say(f"process {i}: pid {proc.pid}")
    for stream, sink in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr)):
      pumps.append(threading.Thread(target=_pump, args=(stream, f"[p{i}] ", sink), daemon=True))
      pumps[-1].start()
    procs.append(proc)

  forwarded = []
  handlers = {s: signal.signal(s, lambda signum, _: forwarded.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
  deadline = None if not timeout else time.monotonic() + timeout
  result = None
  try:
    while result is None:
      codes = [p.poll() for p in procs]
      failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
      if failed:
        i, code = failed[0]
        first_failure = f"process {i} {_describe(code)}"
        say(f"{first_failure}; stopping the other {sum(c is None for c in codes)} process(es)")
        result = code if code > 0 else 128 - code
      elif all(c == 0 for c in codes):
        result = 0
      elif deadline is not None and time.monotonic() > deadline:
        say(f"timed out after {timeout:g}s; stopping all {len(procs)} processes")
        result = 124
      elif forwarded:
        say(f"got signal {forwarded[0]}; passing it on (each process checkpoints and stops)")
        _signal_all(procs, forwarded.pop())
      else:
        time.sleep(poll)
    _stop(procs, grace)
  finally:
    for s, h in handlers.items():
      signal.signal(s, h)
    _stop(procs, 0)
  for pump in pumps:  # the processes' last lines first, so the launcher's verdict is the last line
    pump.join(timeout=5)
  if first_failure:
    say(f"{first_failure} (the first to fail); all {len(procs)} processes stopped, exit {result}")
  return result


def _signal_all(procs, sig):
  for p in procs:
    if p.poll() is None:
      try:
        os.killpg(p.pid, sig)
      except ProcessLookupError:
        pass


def _stop(procs, grace):
  """SIGTERM the survivors, SIGKILL whoever is left after `grace` seconds, and reap everyone."""
  if grace:
    _signal_all(procs, signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end and any(p.poll() is None for p in procs):
      time.sleep(0.1)
  _signal_all(procs, signal.SIGKILL)
  for p in procs:
    p.wait()


class _Parser(argparse.ArgumentParser):
  """A bad flag is one `error:` line and exit 2."""

  def error(self, message):
    print(f"error: {self.prog}: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  if "--" not in argv:
    argv.append("--")
  split = argv.index("--")
  p = _Parser(prog="launch/local.py", description=__doc__.splitlines()[0],
                              usage="%(prog)s --processes N --devices-per-process M [options] -- <trainer args>")
  p.add_argument("--processes", type=int, required=True, help="JAX processes to start on this machine")
  p.add_argument("--devices-per-process", type=int, required=True, dest="devices",
                 help="fake CPU devices per process (XLA_FLAGS host platform device count)")
  p.add_argument("--timeout", type=float, default=3600, help="seconds before everything is stopped (0 = never)")
  p.add_argument("--grace", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL when stopping")
  p.add_argument("--port", type=int, help="coordinator port (default: a free one)")
  args = p.parse_args(argv[:split])
  if args.processes < 1 or args.devices < 1:
    p.error(f"--processes and --devices-per-process must be >= 1, got {args.processes} and {args.devices}")
  if not (args.timeout >= 0 and args.grace >= 0):
    p.error(f"--timeout and --grace must be >= 0 seconds, got {args.timeout} and {args.grace}")
  import portpicker
  coordinator = f"127.0.0.1:{args.port or portpicker.pick_unused_port()}"
  say(f"{args.processes} processes x {args.devices} CPU devices, coordinator {coordinator}")
  command = [sys.executable, "-m", "tessera.trainer", *argv[split + 1:]]
  envs = [process_env(i, args.processes, args.devices, coordinator) for i in range(args.processes)]
  return supervise([command] * args.processes, envs, args.timeout, args.grace)


if __name__ == "__main__":
  _reexec_in_venv()
  sys.exit(main())
