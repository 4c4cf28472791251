"""The malformed-input table of issue 15: each bad input must end in exit 2, exactly one stderr line naming the key,
file, row or shape, and leave every byte already on disk as it was.

`python tests/reliability/malformed_inputs.py` prints the table as markdown (docs/reliability.md). Cases run in
process (the CLI entry points take argv), so the whole table costs one JAX import.
"""
import contextlib
import dataclasses
import hashlib
import importlib.util
import io
import json
import os
import pathlib
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ("--config", "configs/lm.py:tiny")
T = ("train", *TINY, "--workdir", "{tmp}/w", "--config.train.steps=2")  # a fresh train run that would write


@dataclasses.dataclass
class Case:
  name: str
  tool: str  # cli | prepare_text | prepare_meds | compile_check | local
  argv: tuple
  expect: str  # must appear in the stderr line
  needs: tuple = ()  # fixtures copied into the case's folder: run, text, meds, files
  damage: object = None  # fn(tmp) applied after the fixtures, before the checksum
  undo: object = None  # fn(tmp) after the run (unmounts)
  slow: bool = False


def _write(rel, text):
  def damage(tmp):
    path = tmp / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  return damage


def _mkdir(rel):
  return lambda tmp: (tmp / rel).mkdir(parents=True, exist_ok=True)


def _truncate_largest(rel, suffix=""):
  def damage(tmp):
    files = [p for p in (tmp / rel).rglob(f"*{suffix}") if p.is_file()]
    path = max(files, key=lambda p: p.stat().st_size)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
  return damage


def _both(*fns):
  def damage(tmp):
    for fn in fns:
      fn(tmp)
  return damage


def _readonly(rel):
  """A read-only directory: mode 555, and for root (who ignores modes) a read-only tmpfs mounted there."""
  def damage(tmp):
    (tmp / rel).mkdir(parents=True, exist_ok=True)
    os.chmod(tmp / rel, 0o555)
    if os.geteuid() == 0:
      import subprocess
      if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(tmp / rel)], capture_output=True).returncode:
        raise Unavailable("root without mount: no way to make a read-only directory")
  return damage


def _unmount(rel):
  def undo(tmp):
    import subprocess
    if os.geteuid() == 0:
      subprocess.run(["umount", str(tmp / rel)], capture_output=True)
    os.chmod(tmp / rel, 0o755)
  return undo


class Unavailable(Exception):
  """This machine cannot set the case up (the test skips it)."""


def _meds_column_drop(tmp):
  import pyarrow.parquet as pq
  path = next((tmp / "meds" / "data").rglob("*.parquet"))
  pq.write_table(pq.read_table(path).drop(["code"]), path)


def _meds_unsorted(tmp):
  import pyarrow.parquet as pq
  path = sorted((tmp / "meds" / "data" / "train").glob("*.parquet"))[0]
  table = pq.read_table(path)
  pq.write_table(table.take(list(range(table.num_rows))[::-1]), path)


def _stats_edit(**changes):
  def damage(tmp):
    path = tmp / "text" / "stats.json"
    stats = json.loads(path.read_text())
    stats.update(changes)
    path.write_text(json.dumps(stats))
  return damage


def _ckpt_garbage_all(tmp):
  """Every file of every committed step zeroed: nothing intact to restore and resume from."""
  for path in (tmp / "run" / "checkpoints").rglob("*"):
    if path.is_file() and path.name != "commit_success.txt":
      path.write_bytes(b"\0" * 7)


DP = ("--config.data.path={tmp}/text",)
CASES = [
    # ---- config files and overrides ----
    Case("config file raises", "cli", ("train", "--config", "{tmp}/files/raises.py", "--workdir", "{tmp}/w"),
         "raises.py", ("files",)),
    Case("config file has a syntax error", "cli",
         ("train", "--config", "{tmp}/files/syntax.py", "--workdir", "{tmp}/w"), "syntax.py", ("files",)),
    Case("get_config returns a dict", "cli", ("train", "--config", "{tmp}/files/returns_dict.py", "--workdir",
                                              "{tmp}/w"), "returns_dict.py", ("files",)),
    Case("config file without get_config", "cli",
         ("train", "--config", "{tmp}/files/no_get_config.py", "--workdir", "{tmp}/w"), "get_config", ("files",)),
    Case("config file missing", "cli", ("train", "--config", "{tmp}/nope.py", "--workdir", "{tmp}/w"), "nope.py"),
    Case("config file imports a missing module", "cli",
         ("train", "--config", "{tmp}/files/bad_import.py", "--workdir", "{tmp}/w"), "bad_import.py", ("files",)),
    Case("unknown variant", "cli", ("train", "--config", "configs/lm.py:huge", "--workdir", "{tmp}/w"), "huge"),
    Case("--config a garbage .json", "cli", ("train", "--config", "{tmp}/files/garbage.json", "--workdir", "{tmp}/w"),
         "garbage.json", ("files",)),
    Case("--config a JSON list", "cli", ("train", "--config", "{tmp}/files/list.json", "--workdir", "{tmp}/w"),
         "list.json", ("files",)),
    Case("unknown key", "cli", (*T, "--config.train.stepz=3"), "train.stepz"),
    Case("wrong type", "cli", (*T, "--config.train.batch_size=abc"), "train.batch_size"),
    Case("override without value", "cli", (*T, "--config.train.seq_len"), "train.seq_len"),
    Case("stray positional argument", "cli", (*T, "junk"), "junk"),
    Case("unknown flag", "cli", (*T, "--bogus"), "--bogus"),
    Case("train.steps=0", "cli", (*T[:-1], "--config.train.steps=0"), "train.steps"),
    Case("train.batch_size=-1", "cli", (*T, "--config.train.batch_size=-1"), "train.batch_size"),
    Case("train.seq_len=0", "cli", (*T, "--config.train.seq_len=0"), "train.seq_len"),
    Case("batch not divisible by microbatches", "cli", (*T, "--config.train.microbatches=3"), "train.batch_size"),
    Case("optim.lr=1e999", "cli", (*T, "--config.optim.lr=1e999"), "optim.lr"),
    Case("optim.lr=0", "cli", (*T, "--config.optim.lr=0"), "optim.lr"),
    Case("optim.lr=-1e-3", "cli", (*T, "--config.optim.lr=-1e-3"), "optim.lr"),
    Case("optim.lr=nan", "cli", (*T, "--config.optim.lr=nan"), "optim.lr"),
    Case("model.rope_theta=0", "cli", (*T, "--config.model.rope_theta=0"), "model.rope_theta"),
    Case("model.rope_theta=1e999", "cli", (*T, "--config.model.rope_theta=1e999"), "model.rope_theta"),
    Case("model.norm_eps=-1", "cli", (*T, "--config.model.norm_eps=-1"), "model.norm_eps"),
    Case("model.norm_eps=0", "cli", (*T, "--config.model.norm_eps=0"), "model.norm_eps"),
    Case("optim.schedule unknown", "cli", (*T, "--config.optim.schedule=bogus"), "optim.schedule"),
    Case("optim.b2=1", "cli", (*T, "--config.optim.b2=1.0"), "optim.b2"),
    Case("optim.eps=0", "cli", (*T, "--config.optim.eps=0.0"), "optim.eps"),
    Case("optim.warmup_steps > steps", "cli", (*T, "--config.optim.warmup_steps=50"), "optim.warmup_steps"),
    Case("optim.clip=-1", "cli", (*T, "--config.optim.clip=-1.0"), "optim.clip"),
    Case("mesh.data=0", "cli", (*T, "--config.mesh.data=0"), "mesh.data"),
    Case("two mesh axes -1", "cli", (*T, "--config.mesh.fsdp=-1"), "mesh"),
    Case("mesh needs 3 devices", "cli", (*T, "--config.mesh.data=3", "--config.train.batch_size=9"), "needs 3"),
    Case("checkpoint.every_steps=-1", "cli", (*T, "--config.checkpoint.every_steps=-1"), "checkpoint.every_steps"),
    Case("checkpoint.every_seconds=-5", "cli", (*T, "--config.checkpoint.every_seconds=-5.0"),
         "checkpoint.every_seconds"),
    Case("checkpoint.max_to_keep=0", "cli", (*T, "--config.checkpoint.max_to_keep=0"), "checkpoint.max_to_keep"),
    Case("eval.batches=0", "cli", (*T, "--config.eval.batches=0"), "eval.batches"),
    Case("eval.every_steps=-1", "cli", (*T, "--config.eval.every_steps=-1"), "eval.every_steps"),
    Case("data.workers=-3", "cli", (*T, "--config.data.workers=-3"), "data.workers"),
    Case("data.prefetch=-1", "cli", (*T, "--config.data.prefetch=-1"), "data.prefetch"),
    Case("data.name unknown", "cli", (*T, "--config.data.name=bogus"), "data.name"),
    Case("model.name unknown", "cli", (*T, "--config.model.name=bogus"), "model.name"),
    Case("loss.name unknown", "cli", (*T, "--config.loss.name=bogus"), "loss.name"),
    Case("train.trainable bad regex", "cli", (*T, "--config.train.trainable=(("), "train.trainable"),
    Case("init.map without '='", "cli", (*T, "--config.init.map=['nonsense']"), "init.map"),
    Case("sharding rule to unknown axis", "cli", (*T, "--config.sharding.rules=[['embed','bogus']]"),
         "sharding.rules"),
    Case("model.vocab_size below the tokenizer's", "cli", (*T, "--config.model.vocab_size=100"), "model.vocab_size"),
    Case("model.d_model not divisible by heads", "cli", (*T, "--config.model.d_model=66"), "model."),
    Case("model.n_heads not divisible by KV heads", "cli", (*T, "--config.model.n_kv_heads=3"), "model.n_kv_heads"),
    Case("model.dtype unknown", "cli", (*T, "--config.model.dtype=float7"), "model.dtype"),
    Case("data.path missing", "cli", (*T, "--config.data.path={tmp}/nodata"), "nodata"),
    Case("batch larger than the prepared rows", "cli", (*T, *DP, "--config.train.batch_size=4096"),
         "batch_size", ("text",)),
    Case("seq_len=100000 does not fit memory", "cli", (*T, "--config.train.seq_len=100000"), "train.seq_len"),
    Case("--init-from a missing directory", "cli", (*T, "--init-from", "{tmp}/missing"), "missing"),
    Case("--sweep on a config without sweep()", "cli",
         ("train", "--config", "configs/quickstart.py", "--workdir", "{tmp}/w", "--sweep"), "sweep"),
    Case("--num-processes not a number", "cli", (*T, "--coordinator", "h:1", "--num-processes", "x",
                                                "--process-id", "0"), "--num-processes"),
    Case("--process-id >= --num-processes", "cli", (*T, "--coordinator", "h:1", "--num-processes", "2",
                                                   "--process-id", "2"), "--process-id"),
    Case("--coordinator without port", "cli", (*T, "--coordinator", "host", "--num-processes", "2",
                                              "--process-id", "0"), "--coordinator"),
    # ---- workdirs ----
    Case("workdir is a file", "cli", (*T[:4], "{tmp}/files/garbage.json", "--config.train.steps=2"), "garbage.json",
         ("files",)),
    Case("workdir holds somebody else's files", "cli", T, "not a tessera run", (), _write("w/notes.txt", "mine")),
    Case("workdir tb/ is a file", "cli", T, "tb", (), _write("w/tb", "x")),
    Case("workdir checkpoints/ is a file", "cli", T, "checkpoints", (), _write("w/checkpoints", "x")),
    Case("workdir metrics.jsonl is a folder", "cli", T, "metrics.jsonl", (), _mkdir("w/metrics.jsonl/x")),
    Case("workdir is read-only", "cli", T, "not writable", (), _readonly("w"), _unmount("w")),
    Case("workdir under a file", "cli", (*T[:4], "{tmp}/files/garbage.json/w", "--config.train.steps=2"),
         "garbage.json", ("files",)),
    Case("garbage config.json beside checkpoints", "cli", ("train", "--workdir", "{tmp}/run"), "config.json",
         ("run",), _write("run/config.json", "{not json")),
    Case("config.json beside checkpoints is a list", "cli", ("train", "--workdir", "{tmp}/run"), "config.json",
         ("run",), _write("run/config.json", "[1, 2]")),
    Case("resume with another model shape", "cli",
         ("train", *TINY, "--workdir", "{tmp}/run", "--config.model.d_model=128"), "model.d_model", ("run",)),
    Case("--init-from into a workdir with checkpoints", "cli",
         ("train", *TINY, "--workdir", "{tmp}/run", "--init-from", "{tmp}/run"), "--init-from", ("run",)),
    # ---- eval and sample ----
    Case("eval --batches -1", "cli", ("eval", "--workdir", "{tmp}/run", "--batches", "-1"), "--batches", ("run",)),
    Case("eval --batches 0", "cli", ("eval", "--workdir", "{tmp}/run", "--batches", "0"), "--batches", ("run",)),
    Case("eval --batches x", "cli", ("eval", "--workdir", "{tmp}/run", "--batches", "x"), "--batches", ("run",)),
    Case("eval a missing workdir", "cli", ("eval", "--workdir", "{tmp}/none"), "none"),
    Case("eval a workdir without checkpoints", "cli", ("eval", "--workdir", "{tmp}/run"), "checkpoint", ("run",),
         lambda tmp: shutil.rmtree(tmp / "run" / "checkpoints")),
    Case("eval with garbage config.json", "cli", ("eval", "--workdir", "{tmp}/run"), "config.json", ("run",),
         _write("run/config.json", "{not json")),
    Case("eval with a config.json of unknown keys", "cli", ("eval", "--workdir", "{tmp}/run"), "config.json",
         ("run",), _write("run/config.json", '{"model": {"name": 3}}')),
    Case("eval, every checkpoint unreadable", "cli", ("eval", "--workdir", "{tmp}/run"), "corrupt", ("run",),
         _ckpt_garbage_all),
    Case("eval without --workdir", "cli", ("eval",), "--workdir"),
    Case("sample --max-new-tokens -5", "cli", ("sample", "--workdir", "{tmp}/run", "--prompt", "a",
                                               "--max-new-tokens", "-5"), "--max-new-tokens", ("run",)),
    Case("sample --temperature -1", "cli", ("sample", "--workdir", "{tmp}/run", "--prompt", "a", "--temperature",
                                            "-1"), "--temperature", ("run",)),
    Case("sample --temperature nan", "cli", ("sample", "--workdir", "{tmp}/run", "--prompt", "a", "--temperature",
                                             "nan"), "--temperature", ("run",)),
    Case("sample --top-p 2", "cli", ("sample", "--workdir", "{tmp}/run", "--prompt", "a", "--top-p", "2"), "--top-p",
         ("run",)),
    Case("sample --top-k -1", "cli", ("sample", "--workdir", "{tmp}/run", "--prompt", "a", "--top-k", "-1"),
         "--top-k", ("run",)),
    Case("sample --kv-policy bogus", "cli", ("sample", "--workdir", "{tmp}/run", "--prompt", "a", "--kv-policy",
                                             "bogus"), "--kv-policy", ("run",)),
    Case("sample window without --kv-budget", "cli", ("sample", "--workdir", "{tmp}/run", "--prompt", "a",
                                                      "--kv-policy", "window"), "--kv-budget", ("run",)),
    Case("sample --prompts missing file", "cli", ("sample", "--workdir", "{tmp}/run", "--prompts", "{tmp}/p.txt"),
         "p.txt", ("run",)),
    Case("sample --prompts empty file", "cli", ("sample", "--workdir", "{tmp}/run", "--prompts",
                                                "{tmp}/files/empty.txt"), "empty.txt", ("run", "files")),
    Case("sample without a prompt", "cli", ("sample", "--workdir", "{tmp}/run"), "--prompt", ("run",)),
    Case("sample --max-new-tokens x", "cli", ("sample", "--workdir", "{tmp}/run", "--prompt", "a",
                                              "--max-new-tokens", "x"), "--max-new-tokens", ("run",)),
    # ---- prepared data (text) ----
    Case("prepared data: tokenizer.json garbage", "cli", (*T, *DP), "tokenizer.json", ("text",),
         _write("text/tokenizer.json", "{oops")),
    Case("prepared data: tokenizer.json missing", "cli", (*T, *DP), "tokenizer.json", ("text",),
         lambda tmp: (tmp / "text" / "tokenizer.json").unlink()),
    Case("prepared data: stats.json garbage", "cli", (*T, *DP), "stats.json", ("text",),
         _write("text/stats.json", "{oops")),
    Case("prepared data: stats.json lacks keys", "cli", (*T, *DP), "stats.json", ("text",),
         _write("text/stats.json", "{}")),
    Case("prepared data: vocab size disagrees", "cli", (*T, *DP), "vocabulary size", ("text",),
         _stats_edit(vocab_size=12345)),
    Case("prepared data: records index garbage", "cli", (*T, *DP), "records", ("text",),
         lambda tmp: next((tmp / "text").glob("records*")).write_bytes(b"PAR1garbage")),
    Case("prepared data: ArrayRecord shard truncated", "cli", (*T, *DP), "array_record", ("text",),
         _truncate_largest("text", ".array_record")),
    Case("prepared data: ArrayRecord shard missing", "cli", (*T, *DP), "array_record", ("text",),
         lambda tmp: next((tmp / "text").rglob("*.array_record")).unlink()),
    Case("prepared data: unigram counts garbage", "cli", (*T, *DP), "unigram", ("text",),
         lambda tmp: next((tmp / "text").glob("unigram*")).write_bytes(b"garbage")),
    # ---- the prepare tools ----
    Case("prepare_text over empty files", "prepare_text",
         ("--input", "{tmp}/files/empty.txt", "{tmp}/files/empty2.txt", "--out", "{tmp}/out", "--tokenizer",
          "bytes"), "empty", ("files",)),
    Case("prepare_text missing input", "prepare_text", ("--input", "{tmp}/none.txt", "--out", "{tmp}/out"),
         "none.txt"),
    Case("prepare_text unknown tokenizer", "prepare_text", ("--input", "{tmp}/files/doc1.txt", "--out", "{tmp}/out",
                                                            "--tokenizer", "bogus"), "--tokenizer", ("files",)),
    Case("prepare_text --out is a file", "prepare_text", ("--input", "{tmp}/files/doc1.txt", "{tmp}/files/doc2.txt",
                                                          "--out", "{tmp}/files/garbage.json", "--tokenizer", "bytes"),
         "garbage.json", ("files",)),
    Case("prepare_text --vocab-size -5", "prepare_text", ("--input", "{tmp}/files/doc1.txt", "{tmp}/files/doc2.txt",
                                                          "--out", "{tmp}/out", "--vocab-size", "-5"), "--vocab-size",
         ("files",)),
    Case("prepare_text --records-per-shard 0", "prepare_text",
         ("--input", "{tmp}/files/doc1.txt", "{tmp}/files/doc2.txt", "--out", "{tmp}/out", "--tokenizer", "bytes",
          "--records-per-shard", "0"), "--records-per-shard", ("files",)),
    Case("prepare_text garbage --tokenizer-file", "prepare_text",
         ("--input", "{tmp}/files/doc1.txt", "{tmp}/files/doc2.txt", "--out", "{tmp}/out", "--tokenizer-file",
          "{tmp}/files/garbage.json"), "garbage.json", ("files",)),
    Case("prepare_text .jsonl without the text field", "prepare_text",
         ("--input", "{tmp}/files/notext.jsonl", "--out", "{tmp}/out", "--tokenizer", "bytes"), "notext.jsonl",
         ("files",)),
    Case("prepare_text .jsonl with a garbage row", "prepare_text",
         ("--input", "{tmp}/files/badrow.jsonl", "--out", "{tmp}/out", "--tokenizer", "bytes"), "badrow.jsonl",
         ("files",)),
    Case("prepare_text without --out", "prepare_text", ("--input", "{tmp}/files/doc1.txt"), "--out", ("files",)),
    Case("prepare_text into a different dataset", "prepare_text",
         ("--input", "{tmp}/files/doc1.txt", "{tmp}/files/doc2.txt", "--out", "{tmp}/text", "--tokenizer", "bytes"),
         "text", ("files", "text")),
    Case("prepare_meds missing dir", "prepare_meds", ("--input", "{tmp}/none", "--out", "{tmp}/out"), "none"),
    Case("prepare_meds without data/", "prepare_meds", ("--input", "{tmp}/meds", "--out", "{tmp}/out"), "data",
         ("meds",), lambda tmp: shutil.rmtree(tmp / "meds" / "data")),
    Case("prepare_meds garbage parquet", "prepare_meds", ("--input", "{tmp}/meds", "--out", "{tmp}/out"), "parquet",
         ("meds",), lambda tmp: next((tmp / "meds" / "data").rglob("*.parquet")).write_bytes(b"nonsense")),
    Case("prepare_meds missing column", "prepare_meds", ("--input", "{tmp}/meds", "--out", "{tmp}/out"), "code",
         ("meds",), _meds_column_drop),
    Case("prepare_meds rows out of order", "prepare_meds", ("--input", "{tmp}/meds", "--out", "{tmp}/out"), "row",
         ("meds",), _meds_unsorted),
    Case("prepare_meds --records-per-shard 0", "prepare_meds",
         ("--input", "{tmp}/meds", "--out", "{tmp}/out", "--records-per-shard", "0"), "--records-per-shard", ("meds",)),
    Case("prepare_meds splits file garbage", "prepare_meds", ("--input", "{tmp}/meds", "--out", "{tmp}/out"),
         "subject_splits", ("meds",), lambda tmp: (tmp / "meds/metadata/subject_splits.parquet").write_bytes(b"x")),
    # ---- the scripts' own arguments ----
    Case("compile_check --devices 0", "compile_check", (*TINY, "--devices", "0", "--hbm-gb", "1"), "--devices"),
    Case("compile_check --devices -2", "compile_check", (*TINY, "--devices", "-2", "--hbm-gb", "1"), "--devices"),
    Case("compile_check --hbm-gb 0", "compile_check", (*TINY, "--devices", "1", "--hbm-gb", "0"), "--hbm-gb"),
    Case("compile_check without --hbm-gb", "compile_check", (*TINY, "--devices", "1"), "--hbm-gb"),
    Case("compile_check bad override", "compile_check", (*TINY, "--devices", "1", "--hbm-gb", "1",
                                                         "--config.optim.lr=-1"), "optim.lr"),
    Case("local.py --processes 0", "local", ("--processes", "0", "--devices-per-process", "1"), "--processes"),
    Case("local.py --devices-per-process x", "local", ("--processes", "1", "--devices-per-process", "x"),
         "--devices-per-process"),
    Case("local.py --timeout -1", "local", ("--processes", "1", "--devices-per-process", "1", "--timeout", "-1"),
         "--timeout"),
]


# ---- fixtures ----

def make_files(dest):
  dest.mkdir(parents=True)
  (dest / "raises.py").write_text("def get_config(arg=None):\n  raise RuntimeError('boom')\n")
  (dest / "syntax.py").write_text("def get_config(arg=None)\n  return 1\n")
  (dest / "returns_dict.py").write_text("def get_config(arg=None):\n  return {'train': {'steps': 2}}\n")
  (dest / "no_get_config.py").write_text("X = 1\n")
  (dest / "bad_import.py").write_text("import tessera_no_such_module\n\ndef get_config(arg=None):\n  return None\n")
  (dest / "garbage.json").write_text("{not json")
  (dest / "list.json").write_text("[1, 2, 3]")
  (dest / "empty.txt").write_text("")
  (dest / "empty2.txt").write_text("")
  (dest / "doc1.txt").write_text("def f(x):\n  return x + 1\n" * 20)
  (dest / "doc2.txt").write_text("class A:\n  pass\n" * 20)
  (dest / "notext.jsonl").write_text('{"body": "a"}\n{"body": "b"}\n')
  (dest / "badrow.jsonl").write_text('{"text": "a"}\n{"text": "b"}\nnot json\n')


def make_text(dest):
  from tessera.data import prepare_text
  src = dest.parent / "text_src"
  src.mkdir(parents=True)
  import inspect
  import textwrap
  for i, mod in enumerate((json, shutil, dataclasses, contextlib, hashlib, io)):
    (src / f"d{i}.txt").write_text(textwrap.dedent(inspect.getsource(mod)))
  with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    assert prepare_text.main(["--input", str(src), "--out", str(dest), "--tokenizer", "bytes"]) == 0
  shutil.rmtree(src)


def make_meds(dest):
  from tessera.data import meds_synth
  meds_synth.write_dataset(dest, num_subjects=40, seed=0)


def make_run(dest):
  """A finished 4-step tiny run with checkpoints at 2 and 4 (subprocess: fresh JAX, as a user runs it)."""
  import subprocess
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  result = subprocess.run([sys.executable, "-m", "tessera.trainer", *TINY, "--workdir", str(dest),
                           "--config.train.steps=4", "--config.checkpoint.every_steps=2",
                           "--config.eval.batches=1", "--config.sample.max_new_tokens=2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]


BUILDERS = {"files": make_files, "text": make_text, "meds": make_meds, "run": make_run}


class Fixtures:
  """Builds each fixture once (into `root`) and copies it into a case's folder."""

  def __init__(self, root):
    self.root = pathlib.Path(root)

  def copy(self, name, tmp):
    source = self.root / name
    if not source.exists():
      BUILDERS[name](source)
    shutil.copytree(source, tmp / name, symlinks=True)


# ---- running a case ----

def checksum(tmp):
  """Every path under tmp with its type, mode and bytes: any change, creation or removal changes it."""
  h = hashlib.sha256()
  for dirpath, dirnames, filenames in os.walk(tmp):
    dirnames.sort()
    for name in sorted(dirnames + filenames):
      path = pathlib.Path(dirpath, name)
      st = path.lstat()
      h.update(f"{path.relative_to(tmp)}|{st.st_mode}|".encode())
      if path.is_file() and not path.is_symlink():
        h.update(path.read_bytes())
  return h.hexdigest()


def _script(name, path):
  spec = importlib.util.spec_from_file_location(name, ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def entry(tool):
  if tool == "cli":
    from tessera.trainer import cli
    return cli.main
  if tool == "prepare_text":
    from tessera.data import prepare_text
    return prepare_text.main
  if tool == "prepare_meds":
    from tessera.data import prepare_meds
    return prepare_meds.main
  if tool == "compile_check":
    return _script("compile_check", "scripts/compile_check.py").main
  if tool == "local":
    return _script("launch_local", "launch/local.py").main
  raise KeyError(tool)


def run_case(case, tmp, fixtures):
  """(exit code, stderr, checksum before, checksum after) of one case run in this process."""
  tmp = pathlib.Path(tmp)
  for name in case.needs:
    fixtures.copy(name, tmp)
  if case.damage is not None:
    case.damage(tmp)
  before = checksum(tmp)
  argv = [a.replace("{tmp}", str(tmp)) for a in case.argv]
  out, err = io.StringIO(), io.StringIO()
  saved_env = dict(os.environ)
  cwd = os.getcwd()
  try:
    os.chdir(ROOT)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      try:
        code = entry(case.tool)(argv)
      except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
      except Exception as e:  # noqa: BLE001  (reported as a failing case, not a crash of the table)
        import traceback
        code = "traceback"
        err.write("".join(traceback.format_exception(e)))
  finally:
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(saved_env)
  after = checksum(tmp)
  if case.undo is not None:
    case.undo(tmp)
  return code, err.getvalue(), before, after


def stderr_lines(text):
  return [line for line in text.splitlines() if line.strip()]


def main():
  """Runs the table and prints it as markdown."""
  import tempfile
  with tempfile.TemporaryDirectory() as root:
    fixtures = Fixtures(pathlib.Path(root) / "fixtures")
    print("| # | input | tool | exit | the one stderr line |\n|---|---|---|---|---|")
    only = os.environ.get("ONLY", "")
    for i, case in enumerate(CASES, 1):
      if (only and only not in case.name) or case.name in os.environ.get("SKIP", "").split(","):
        continue
      tmp = pathlib.Path(root) / f"case{i}"
      tmp.mkdir()
      code, err, before, after = run_case(case, tmp, fixtures)
      lines = stderr_lines(err)
      line = lines[-1] if len(lines) == 1 else f"{len(lines)} LINES: " + " / ".join(lines[-3:])
      same = "" if before == after else " **CHANGED FILES**"
      line = line.replace(root, "…").replace("|", "\\|")[:160]
      print(f"| {i} | {case.name} | {case.tool} | {code}{same} | `{line}` |", flush=True)


if __name__ == "__main__":
  main()
