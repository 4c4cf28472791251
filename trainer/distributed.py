"""Joining a multi-process JAX job before the first device use; barriers that time out; a clean shutdown.

Where the process group comes from (first match wins):
  1. CLI flags `--coordinator HOST:PORT --num-processes N --process-id I`, else the environment
     TESSERA_COORDINATOR / TESSERA_NUM_PROCESSES / TESSERA_PROCESS_ID (what launch/local.py sets);
  2. SLURM (`srun` with SLURM_NTASKS > 1): JAX derives the coordinator (first node, port from the job id);
  3. TESSERA_DISTRIBUTED=auto, or a multi-host Cloud TPU/GKE slice (TPU_WORKER_HOSTNAMES lists several hosts):
     JAX's own cluster detection (TPU metadata, GKE, Open MPI); launch/tpu_pod.sh sets it.
Otherwise this is a single process and nothing is initialised. TESSERA_DISTRIBUTED=off forces that.

Timeouts, in seconds, from the environment (defaults in brackets): TESSERA_INIT_TIMEOUT [300] for every peer to
join; TESSERA_HEARTBEAT_TIMEOUT [100] after which a silent peer is declared dead and the others are stopped by
JAX's coordination service; TESSERA_BARRIER_TIMEOUT [1800] for `barrier()`. A peer that crashes mid-step
also breaks the CPU/GPU collectives at once, so the survivors fail well before the heartbeat timeout.

This module imports JAX only inside functions: the CLI plans the group before any heavy import.
"""
import argparse
import dataclasses
import os
import sys
import threading

from tessera.trainer.config_loader import ConfigError

DEFAULT_TIMEOUTS = {"TESSERA_INIT_TIMEOUT": 300, "TESSERA_HEARTBEAT_TIMEOUT": 100, "TESSERA_BARRIER_TIMEOUT": 1800}


class DistributedError(RuntimeError):
  """A peer never arrived, died, or missed a barrier: the message is one line naming who and what."""


@dataclasses.dataclass(frozen=True)
class Group:
  """How to join: explicit fields, or `source` "slurm"/"auto" where JAX fills in the unset ones."""
  source: str
  coordinator: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  init_timeout: int = DEFAULT_TIMEOUTS["TESSERA_INIT_TIMEOUT"]
  heartbeat_timeout: int = DEFAULT_TIMEOUTS["TESSERA_HEARTBEAT_TIMEOUT"]

  def describe(self):
    who = "process ?" if self.process_id is None else f"process {self.process_id}"
    of = "" if self.num_processes is None else f" of {self.num_processes}"
    return f"{who}{of} (coordinator {self.coordinator or 'from ' + self.source})"


_state = {"group": None, "barrier_timeout": DEFAULT_TIMEOUTS["TESSERA_BARRIER_TIMEOUT"], "barriers": 0}


def split_flags(argv):
  """(explicit flag values, the other args): the three join flags are accepted by every command."""
  p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  p.add_argument("--coordinator", help="HOST:PORT of process 0 (multi-process runs)")
  p.add_argument("--num-processes", dest="num_processes", help="processes in the run")
  p.add_argument("--process-id", dest="process_id", help="this process's index, 0 .. N-1")
  known, rest = p.parse_known_args(argv)
  return {k: v for k, v in vars(known).items() if v is not None}, rest


def _int(name, text, minimum):
  try:
    value = int(text)
  except (TypeError, ValueError):
    raise ConfigError(f"{name}: expected an integer, got {text!r}") from None
  if value < minimum:
    raise ConfigError(f"{name}: must be >= {minimum}, got {value}")
  return value


def plan(flags=None, environ=None):
  """The Group to join, or None for a single process. Pure (reads only its arguments); bad values: ConfigError."""
  flags, environ = flags or {}, os.environ if environ is None else environ
  timeouts = {name: _int(name, environ.get(name, default), 1) for name, default in DEFAULT_TIMEOUTS.items()}
  _state["barrier_timeout"] = timeouts["TESSERA_BARRIER_TIMEOUT"]
  common = dict(init_timeout=timeouts["TESSERA_INIT_TIMEOUT"], heartbeat_timeout=timeouts["TESSERA_HEARTBEAT_TIMEOUT"])
  mode = environ.get("TESSERA_DISTRIBUTED", "")
  if mode not in ("", "auto", "off"):
    raise ConfigError(f"TESSERA_DISTRIBUTED: expected 'auto' or 'off', got {mode!r}")
  explicit = {
      "coordinator": flags.get("coordinator", environ.get("TESSERA_COORDINATOR")),
      "num_processes": flags.get("num_processes", environ.get("TESSERA_NUM_PROCESSES")),
      "process_id": flags.get("process_id", environ.get("TESSERA_PROCESS_ID")),
  }
  if any(v is not None for v in explicit.values()):
    missing = [k for k, v in explicit.items() if v is None]
    if missing:
      raise ConfigError(f"distributed: --{missing[0].replace('_', '-')} (or TESSERA_{missing[0].upper()}) is "
                        f"missing; give coordinator, num-processes and process-id together")
    if ":" not in explicit["coordinator"]:
      raise ConfigError(f"--coordinator: expected HOST:PORT, got {explicit['coordinator']!r}")
    n = _int("--num-processes", explicit["num_processes"], 1)
    i = _int("--process-id", explicit["process_id"], 0)
    if i >= n:
      raise ConfigError(f"--process-id: {i} is not below --num-processes={n}")
    return None if n == 1 else Group("flags", explicit["coordinator"], n, i, **common)
  if mode == "off":
    return None
  if "SLURM_JOB_ID" in environ and _int("SLURM_NTASKS", environ.get("SLURM_NTASKS", "1"), 1) > 1:
    return Group("slurm", **common)
  if mode == "auto" or "," in environ.get("TPU_WORKER_HOSTNAMES", ""):
    return Group("auto", **common)
  return None


def initialize(group):
  """Joins `group` (None: nothing to do). Must run before the first JAX device use. Raises DistributedError."""
  if group is None:
    return
  import jax
  _relay_stderr(group)
  # JAX aborts the process (C++ LOG(FATAL), a stack dump) when its own join deadline passes; our deadline comes
  # first and ends the process with one line naming the coordinator instead.
  joining = threading.Event()
  timer = threading.Timer(group.init_timeout, _join_timed_out, (group, joining))
  timer.daemon = True
  timer.start()
  try:
    jax.distributed.initialize(
        coordinator_address=group.coordinator, num_processes=group.num_processes, process_id=group.process_id,
        initialization_timeout=group.init_timeout + 60, heartbeat_timeout_seconds=group.heartbeat_timeout,
        shutdown_timeout_seconds=min(group.heartbeat_timeout, 60))
  except Exception as e:  # noqa: BLE001  (ValueError, RuntimeError from detection: all mean "could not join")
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DistributedError(f"{group.describe()}: could not join ({reason[:300]})") from None
  finally:
    joining.set()
    timer.cancel()
  from jax._src import distributed as jax_distributed
  _state["group"] = dataclasses.replace(group, coordinator=jax_distributed.global_state.coordinator_address,
                                        num_processes=jax.process_count(), process_id=jax.process_index())


def _relay_stderr(group):
  """JAX's client aborts the process with a C++ stack dump (LOG(FATAL)) when the coordination service reports a dead
  peer; no Python code runs after it. So this process's stderr goes through a small relay process
  (tessera.trainer.peer_report) that passes every line on and, when the dump names dead processes, ends the stream
  with one line naming them."""
  import subprocess
  read_end, write_end = os.pipe()
  subprocess.Popen([sys.executable, "-m", "tessera.trainer.peer_report", str(group.num_processes),
                    str(group.heartbeat_timeout), str(group.process_id)], stdin=read_end, stdout=sys.stderr.fileno(),
                   stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
  os.close(read_end)
  sys.stderr.flush()
  os.dup2(write_end, sys.stderr.fileno())
  os.close(write_end)


def _join_timed_out(group, joining):
  if not joining.is_set():
    print(f"error: {group.describe()}: could not join within {group.init_timeout}s -- the coordinator is "
          f"unreachable or a peer never arrived (TESSERA_INIT_TIMEOUT)", file=sys.stderr, flush=True)
    os._exit(1)


def barrier(name, timeout_s=None):
  """Blocks until every process reaches `name`; DistributedError naming it when one does not in time."""
  group = _state["group"]
  if group is None:
    return
  from jax._src import distributed as jax_distributed
  timeout_s = timeout_s or _state["barrier_timeout"]
  _state["barriers"] += 1  # barrier ids must be unique per use; every process counts the same sequence
  try:
    jax_distributed.global_state.client.wait_at_barrier(f"tessera/{_state['barriers']}/{name}",
                                                        int(timeout_s * 1000))
  except Exception as e:  # noqa: BLE001  (DEADLINE_EXCEEDED, or the service reporting a dead peer)
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DistributedError(f"{group.describe()}: barrier {name!r}: not every process arrived within {timeout_s}s "
                           f"({reason[:300]})") from None


def shutdown():
  """Leaves the group cleanly (after a successful run: a failed one just exits and its peers are told)."""
  if _state["group"] is None:
    return
  import jax
  _state["group"] = None
  jax.distributed.shutdown()
