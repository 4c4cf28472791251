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
