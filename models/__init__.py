from tessera.models import decoder  # registers "decoder"
from tessera.models import stem  # registers "stem"
