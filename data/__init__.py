from tessera.data import embedded  # registers "embedded"
from tessera.data import prepared  # registers "prepared" (a set data.path: scripts/prepare_text or prepare_meds)
