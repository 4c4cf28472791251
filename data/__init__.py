from tessera.data import embedded  # registers "embedded"
