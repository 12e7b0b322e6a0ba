"""Paper Tables 3-5 end to end on the CPU: a chain whose student has another architecture than
its teacher and inherits the teacher's stem and head, frozen, through `python -m engine run`."""
import subprocess
import sys

import torch

from engine import spec
from engine.events import read_events
from engine.models import build
from engine.runs import RunPaths, list_runs
from engine.context import derive_seed

CONFIG = """
[[experiment]]
name = "t5-cpu"
dataset = { name = "digits" }
epochs = 2
batch_size = 128
optimizer = { lr = 0.05 }
ensembles = [1]
[[experiment.generation]]
objective = "ce"
model = "densenet-bc-16-8"
[[experiment.generation]]
objective = "ban"
model = "ban-wrn-1-1"
model_options = { teacher = "densenet-bc-16-8" }
inherit = ["stem", "head"]
freeze = ["stem", "head"]
"""


def test_cross_architecture_student_with_a_frozen_inherited_stem_and_head(tmp_path):
    config = tmp_path / "e.toml"
    config.write_text(CONFIG)
    subprocess.run([sys.executable, "-m", "engine", "run", str(config), "--experiment", "t5-cpu",
                    "--runs-dir", str(tmp_path / "runs")], check=True, timeout=300)
    paths = RunPaths(list_runs(tmp_path / "runs")[0])
    events = read_events(paths.events)
    starts = {e["gen"]: e for e in events if e["kind"] == "gen_start"}
    assert (starts[0]["model"], starts[1]["model"]) == ("densenet-bc-16-8", "ban-wrn-1-1")
    assert starts[1]["inherit"] == ["stem", "head"] and starts[1]["freeze"] == ["stem", "head"]
    assert events[-1]["kind"] == "run_end" and events[-1]["status"] == "ok"

    teacher = torch.load(paths.gen_checkpoint(0), weights_only=True)["state_dict"]
    student = torch.load(paths.gen_checkpoint(1), weights_only=True)["state_dict"]
    for key in [k for k in student if k.startswith(("stem.", "head."))]:
        # frozen: after two epochs of SGD with weight decay, still the teacher's values bit for bit
        assert torch.equal(student[key], teacher[key]), key
    # ...while the body, which is not inherited, trained away from its initialisation
    exp = spec.load(paths.snapshot).experiments["t5-cpu"]
    g = exp.generations[1]
    torch.manual_seed(derive_seed(0, "gen", 1))   # the student's own initialisation (chain seed 0)
    fresh = build(g.model, 10, 1, **g.model_options).state_dict()
    body = [k for k in student if not k.startswith(("stem.", "head.")) and k.endswith("weight")]
    assert body and any(not torch.equal(student[k], fresh[k]) for k in body)
