"""The §6 two-stage learning rate (tessera.models.zett_optim): 0 at step 0 (so the rescalers stored after the first
update are those of the initial hypernetwork), a restart from 0 at the stage switch, cosine to 0.1x at the end; a
zett config's parameters use it."""
import numpy as np

from tessera.configs import zett as zett_config
from tessera.models import registry
from tessera.models import zett_optim
from tessera.trainer import optim


def test_two_stage_schedule_shape():
  c = zett_config.build("small")  # 1800 steps: identity 300 (lr 1e-3), warmup 90 to 5e-4, cosine to 5e-5
  lr = zett_optim.schedule(c.optim)
  assert float(lr(0)) == 0.0 and np.isclose(float(lr(150)), 0.5e-3)
  assert float(lr(300)) == 0.0  # stage 2 restarts from 0
  assert np.isclose(float(lr(390)), 5e-4) and np.isclose(float(lr(1800)), 5e-5, rtol=1e-3)


def test_zett_params_use_the_two_stage_update_and_it_follows_train_steps():
  c = zett_config.build("tiny")
  assert optim.group_updates(c, {"a": "default"}, {"a": np.zeros(2)}) == {"default": zett_optim.NAME}
  assert zett_optim.NAME in registry.OPTIMIZER_UPDATES
  with c.unlocked():
    c.train.steps = 600
  assert c.optim.zett.identity_steps == 100 and c.optim.zett.total_steps == 600 and c.optim.zett.warmup == 30
