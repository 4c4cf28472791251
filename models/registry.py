"""Name -> builder registry for models; the trainer reaches models only through `get` (config key `model.name`)."""

MODELS = {}


def register(name):
  """Decorator: registers a builder under `name` (a new method adds a file, never trainer code)."""
  def add(builder):
    MODELS[name] = builder
    return builder
  return add


def get(name):
  if name not in MODELS:
    raise KeyError(f"model.name: unknown model {name!r}; known: {sorted(MODELS)}")
  return MODELS[name]


ACCOUNTING = {}


def accounting(name):
  """Decorator: registers `fn(cfg, seq_len) -> dict` of counts for model `name`; the trainer logs every entry and
  uses "train_flops_per_token" for MFU (models without one fall back to 6 x parameters)."""
  def add(fn):
    ACCOUNTING[name] = fn
    return fn
  return add
