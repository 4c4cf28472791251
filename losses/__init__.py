from tessera.losses import next_token  # registers "next_token"
