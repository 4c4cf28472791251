"""`python -m tessera.trainer [train|eval|sample] ...` — see tessera.trainer.cli."""
import sys

from tessera.trainer.cli import main

if __name__ == "__main__":
  sys.exit(main())
