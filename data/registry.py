"""Name -> builder registry for data; the trainer reaches data only through `get` (config key `data.name`)."""

PIPELINES = {}


def register(name):
  """Decorator: registers a builder under `name` (a new method adds a file, never trainer code)."""
  def add(builder):
    PIPELINES[name] = builder
    return builder
  return add


def get(name):
  if name not in PIPELINES:
    raise KeyError(f"data.name: unknown data {name!r}; known: {sorted(PIPELINES)}")
  return PIPELINES[name]


def name_for(cfg_data):
  """The pipeline a config selects: a set `data.path` on the default (embedded) config means a prepared dataset."""
  if cfg_data.path and cfg_data.name == "embedded":
    return "prepared"
  return cfg_data.name


PREPARERS = {}


def preparer(name):
  """Decorator: registers `fn(cfg_data, directory, seed)` that writes pipeline `name`'s dataset into `directory`
  (e.g. a synthetic dataset). The trainer runs it once per workdir, into `<workdir>/data`, before building the
  pipeline, and passes that directory to the builder as `prepared=`."""
  def add(fn):
    PREPARERS[name] = fn
    return fn
  return add
