"""Name -> builder registry for losses; the trainer reaches losses only through `get` (config key `loss.name`)."""

LOSSES = {}


def register(name):
  """Decorator: registers a builder under `name` (a new method adds a file, never trainer code)."""
  def add(builder):
    LOSSES[name] = builder
    return builder
  return add


def get(name):
  if name not in LOSSES:
    raise KeyError(f"loss.name: unknown loss {name!r}; known: {sorted(LOSSES)}")
  return LOSSES[name]
