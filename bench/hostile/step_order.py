import sys, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout
from orchestrator import checkpoint

class Group:
    def save_checkpoint(self, path):
        Path(path).mkdir(parents=True); (Path(path) / "w").write_text(path)

out = Path(tempfile.mkdtemp())
for step in (999_998, 999_999, 1_000_000):
    checkpoint.save(out, step, {"loader": {}}, {"policy": Group()}, keep=2)
print("kept:", sorted(p.name for p in checkpoint.root(out).glob("step_*")))
print("newest_state:", checkpoint.newest_state(out)[1]["step"], "latest:", checkpoint.latest(out)[1]["step"])
