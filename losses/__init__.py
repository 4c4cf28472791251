from tessera.losses import backslash_rule  # registers the BackSlash after-update rule and the weight statistics
from tessera.losses import next_token  # registers "next_token"
from tessera.losses import trimkv  # registers "trimkv" (distillation + capacity) and its key checks
from tessera.losses import ehr_jepa  # registers "ehr_jepa" (SFT + JEPA latent loss, EMA rule, probes at the end)
from tessera.losses import zett  # registers "zett" (identity stage, then LM loss under the sampled tokenizer + aux)
