"""Where a step's time goes: a jax.profiler trace's XLA op times grouped by the model code that emitted each op.

`scripts/bench --shapes a --profile DIR` writes, per shape and policy, DIR/<shape>_<policy>/{tessera,plain}/ with
the trace and the compiled step's HLO (hlo.txt); `python scripts/bench_ops.py DIR/a_float32/tessera` prints the
table. Each HLO op's metadata names its source frames (file, function); the innermost frame that a REGIONS rule
matches names the region (backward ops carry their forward op's source, so a region is forward + backward).
A fusion without metadata takes its fused computation's root's region, else the most common one inside it.
"""
import collections
import gzip
import json
import pathlib
import re
import sys

# (substring of "file:function", region), first match wins, tried on the innermost source frame first.
REGIONS = (
    ("rope", "attention: rope"),
    ("attention", "attention"),
    ("RMSNorm", "norms"),
    ("MLP", "mlp"), ("SwiGLU", "mlp"), ("mlp", "mlp"),
    ("cross_entropy", "head + loss"), ("fused_cross_entropy", "head + loss"), ("_logits", "head + loss"),
    ("logits", "head + loss"), ("loss_fn", "head + loss"), ("optax/losses", "head + loss"),
    ("optax", "optimizer"), ("trainer/optim", "optimizer"), ("trainer/step", "step: norms, metrics"),
    ("Block.__call__", "residual adds"), ("_forward", "embedding"), ("GPT.__call__", "embedding"),
)


def _table(text, header):
  """{id: value} of one of the HLO text's FileNames / FunctionNames / FileLocations / StackFrames sections."""
  out, inside = {}, False
  for line in text.splitlines():
    if line == header:
      inside = True
    elif inside and not line.strip():
      break
    elif inside:
      key, _, value = line.partition(" ")
      out[int(key)] = value.strip().strip('"')
  return out


def frames(text):
  """{stack frame id: ["file:function", ... innermost first]}."""
  files, functions = _table(text, "FileNames"), _table(text, "FunctionNames")
  locations = {k: dict(kv.split("=") for kv in v.strip("{}").split()) for k, v in
               _table(text, "FileLocations").items()}
  stack = {k: dict(kv.split("=") for kv in v.strip("{}").split()) for k, v in _table(text, "StackFrames").items()}

  def chain(frame_id):
    out, seen = [], set()
    while frame_id in stack and frame_id not in seen:
      seen.add(frame_id)
      loc = locations[int(stack[frame_id]["file_location_id"])]
      out.append(f"{files[int(loc['file_name_id'])]}:{functions[int(loc['function_name_id'])]}")
      frame_id = int(stack[frame_id].get("parent_frame_id", 0))
    return out
  return {k: chain(k) for k in stack}


def region(chain):
  for where in chain:
    for pattern, name in REGIONS:
      if pattern in where:
        return name
  return f"other: {chain[0].rsplit('/', 1)[-1]}" if chain else "other (no source)"


def op_regions(text):
  """{HLO instruction name: region} for every instruction of the compiled module's text."""
  chains = frames(text)
  own, calls, roots, inside, computation = {}, {}, {}, collections.defaultdict(collections.Counter), None
  for line in text.splitlines():
    header = re.match(r"(?:ENTRY )?%(\S+) \(.*\{$", line)
    if header:
      computation = header.group(1)
      continue
    inst = re.match(r"\s*(ROOT )?%(\S+) = ", line)
    if not inst:
      continue
    name = inst.group(2)
    frame = re.search(r"stack_frame_id=(\d+)", line)
    if frame:
      own[name] = region(chains.get(int(frame.group(1)), []))
      inside[computation][own[name]] += 1
    called = re.search(r"calls=%([\w.\-]+)", line)
    if called:
      calls[name] = called.group(1)
    if inst.group(1):
      roots[computation] = name
  out = dict(own)
  for name, computation in calls.items():
    if name not in own:
      common = inside[computation].most_common(1)
      out[name] = own.get(roots.get(computation)) or (common[0][0] if common else "other (no source)")
  return out


def op_times(trace_dir):
  """{HLO op: total microseconds} from the newest *.trace.json.gz under `trace_dir`."""
  trace = max(pathlib.Path(trace_dir).rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
  events = json.load(gzip.open(trace))
  events = events["traceEvents"] if isinstance(events, dict) else events
  out = collections.Counter()
  for e in events:
    op = e.get("args", {}).get("hlo_op")
    if e.get("ph") == "X" and op and not e["name"].startswith("end:"):
      out[op] += e.get("dur", 0.0)
  return out


def breakdown(trace_dir, steps):
  """[(region, ms per step, share of the op time)], largest first; needs `trace_dir`/hlo.txt."""
  regions = op_regions((pathlib.Path(trace_dir) / "hlo.txt").read_text())
  totals = collections.Counter()
  for op, us in op_times(trace_dir).items():
    totals[regions.get(op, "other (not in hlo.txt)")] += us
  whole = sum(totals.values()) or 1.0
  return [(name, us / 1e3 / steps, us / whole) for name, us in totals.most_common()]


def markdown(rows):
  lines = ["| region | ms/step | share |", "|---|---:|---:|"]
  lines += [f"| {name} | {ms:.1f} | {share:.0%} |" for name, ms, share in rows]
  return "\n".join(lines)


if __name__ == "__main__":
  where = sys.argv[1]
  steps = json.loads((pathlib.Path(where) / "steps.json").read_text())["steps"]
  print(markdown(breakdown(where, steps)))
