from tessera.models import config_checks  # registers the decoder's key checks
from tessera.models import decoder  # registers "decoder"
from tessera.models import stem  # registers "stem"
from tessera.models import stem_method  # STEM's checks, sharding rule, sparse-row update, offload step
from tessera.models import trimkv  # registers "trimkv" (retention-gated decoder) and its key checks
from tessera.models import ehr_world  # registers "ehr_world" (JEPA world model: decoder + predictor + EMA target)
from tessera.models import zett  # registers "zett" (ZeTT hypernetwork around a frozen decoder) and its checks
