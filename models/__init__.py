from tessera.models import decoder  # registers "decoder"
