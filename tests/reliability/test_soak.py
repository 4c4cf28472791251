"""scripts/soak, short: 3 random SIGKILL/SIGTERM moments and resumes give the uninterrupted run's final state byte for
byte, every step's loss exactly once and equal, and no corrupt checkpoint (issue 15; `scripts/soak --kills 20` is the
long version, figures in docs/reliability.md)."""
import json
import subprocess
import sys

from tessera_testing import ROOT


def test_three_kills_resume_bitwise(tmp_path):
  result = subprocess.run([sys.executable, "scripts/soak.py", "--kills", "3", "--steps", "24", "--every-steps", "3",
                           "--seed", "1", "--keep", str(tmp_path / "soak")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert result.returncode == 0, report
  assert report["kills"] == 3 and report["final_params_bitwise"] and report["arrays_compared"] > 10
  assert report["steps_missing"] == 0 and report["steps_duplicated"] == 0 and report["losses_equal"] == 24
  assert report["corrupt_checkpoints"] == 0 and report["summary_written"]
