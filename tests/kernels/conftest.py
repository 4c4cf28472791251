"""Kernel tests: Pallas runs in interpret mode on CPU (slow, small shapes) and for real on GPU.

The kernels pick interpret mode from the backend themselves, so this file only sets the test configuration:
strict rank promotion (the kernels must not rely on it) and, on CPU, cheaper compiles (XLA's CPU optimisations
dominate the cost of interpret-mode programs and buy nothing for tests). Both are restored afterwards.
"""

import jax
import pytest


@pytest.fixture(autouse=True, scope="module")
def _kernel_test_config():
  settings = {"jax_disable_most_optimizations": jax.default_backend() == "cpu", "jax_numpy_rank_promotion": "raise"}
  before = {name: jax.config.values[name] for name in settings}
  for name, value in settings.items():
    jax.config.update(name, value)
  yield
  for name, value in before.items():
    jax.config.update(name, value)
