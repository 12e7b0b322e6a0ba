"""Models by reference (issue 24): a test-made package named by import path trains a teacher ->
BAN-1 chain and resumes after SIGKILL to the same numbers; timm's and torchvision's models train
a generation each; `parts` inherits and freezes exactly the named modules; every bad reference
is exit 2 from `ban validate` with file:line and the underlying message."""
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from engine import catalog, spec
from engine.events import read_events
from engine.models import build
from engine.models.inherit import inherit
from helpers import BAN, cli_env, toml_value
from test_engine_process import epochs_of, numbers, wait_for

PACKAGE = '''
import torch.nn as nn

def tiny(num_classes, in_channels, width=8):
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

def no_sizes(width=8):
    return nn.Sequential(nn.Conv2d(1, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 7))

def raises(width=8):
    raise RuntimeError("width must be even")

def not_a_module():
    return 3
'''


@pytest.fixture
def package(tmp_path):
    """A package `mynets` of the test's own, importable through PYTHONPATH."""
    (tmp_path / "pkgs" / "mynets").mkdir(parents=True)
    (tmp_path / "pkgs" / "mynets" / "__init__.py").write_text(PACKAGE)
    return tmp_path / "pkgs"


def env_with(package) -> dict:
    return {**cli_env(), "PYTHONPATH": str(package), "PYTHONUNBUFFERED": "1"}


def engine(cwd, env, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "engine", *map(str, args)], cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(cwd / "err.log", "ab"))


def experiment(name, model, dataset=None, **keys) -> str:
    lines = ["[[experiment]]", f'name = "{name}"', f"dataset = {toml_value(dataset or {'name': 'digits'})}",
             f'model = "{model}"', 'device = "cpu"', 'precision = "fp32"'] + [f"{k} = {toml_value(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


CHAIN = experiment("mine", "mynets:tiny", model_options={"width": 6}, generations=1, epochs=4, batch_size=32, seeds=[1],
                   optimizer={"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4})


def test_an_import_path_model_trains_a_chain_and_resumes_after_sigkill_to_the_same_numbers(package, tmp_path):
    env = env_with(package)
    (tmp_path / "c.toml").write_text(CHAIN)
    ref = engine(tmp_path, env, "run", "c.toml", "--experiment", "mine", "--runs-dir", "runs", "--run-id", "ref")
    assert ref.wait(timeout=240) == 0, (tmp_path / "err.log").read_text()
    root = tmp_path / "runs" / "mine" / "killed"
    proc = engine(tmp_path, env, "run", "c.toml", "--experiment", "mine", "--runs-dir", "runs", "--run-id", "killed")
    wait_for(root, lambda ev: len(epochs_of(ev, 1)) >= 1, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    elsewhere = tmp_path / "elsewhere" / "mine" / "killed"   # a machine without the package says so
    shutil.copytree(root, elsewhere)
    (tmp_path / "err.log").write_text("")
    assert engine(tmp_path, cli_env(), "resume", elsewhere).wait(timeout=240) == 2
    err = (tmp_path / "err.log").read_text()
    assert "cannot import 'mynets'" in err and f"this run was made with mynets (no installed version) from {package}" in err
    assert engine(tmp_path, env, "resume", root).wait(timeout=240) == 0, (tmp_path / "err.log").read_text()

    want, got = read_events(tmp_path / "runs" / "mine" / "ref" / "events.jsonl"), read_events(root / "events.jsonl")
    assert [e["status"] for e in got if e["kind"] == "run_end"] == ["ok"]
    assert numbers(got) == numbers(want) and ("gen_end", 1) in numbers(got)
    source = next(e for e in got if e["kind"] == "gen_start")["model_source"]
    assert source["reference"] == "mynets:tiny" and source["origin"] == str(package / "mynets" / "__init__.py")
    assert f"# model mynets:tiny: mynets (no installed version) from {package}" in (root / "experiment.toml").read_text()


def npz_set(root, n_train=64, n_test=32, size=32, classes=4):
    """A tiny 3-channel npz data set (real .npz files) whose label is the brightest channel."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(0, classes, n)
        x = rng.integers(0, 120, (n, size, size, 3)).astype(np.uint8)
        x[np.arange(n), :, :, y % 3] += 100
        np.savez(root / f"{split}.npz", x=x, y=y)
    return root


def test_timm_and_torchvision_models_each_train_a_generation(tmp_path):
    data = npz_set(tmp_path / "data")
    text = experiment("hubs", "timm:test_resnet", {"name": "npz", "root": str(data)}, epochs=1, batch_size=32,
                      ensembles=[1]) + '''
[[experiment.generation]]
objective = "ce"
[[experiment.generation]]
objective = "ban"
model = "torchvision:resnet18"
'''
    (tmp_path / "c.toml").write_text(text)
    proc = engine(tmp_path, cli_env(), "run", "c.toml", "--experiment", "hubs", "--runs-dir", "runs", "--run-id", "r")
    assert proc.wait(timeout=280) == 0, (tmp_path / "err.log").read_text()
    events = read_events(tmp_path / "runs" / "hubs" / "r" / "events.jsonl")
    starts = [e for e in events if e["kind"] == "gen_start"]
    assert [(e["model"], e["model_source"]["package"]) for e in starts] == [("timm:test_resnet", "timm"),
                                                                           ("torchvision:resnet18", "torchvision")]
    assert starts[1]["params"] == sum(p.numel() for p in build("torchvision:resnet18", 4).parameters())
    assert [e["gen"] for e in events if e["kind"] == "gen_end"] == [0, 1]
    assert events[-1]["status"] == "ok"


def test_parts_inherit_and_freeze_exactly_the_named_modules():
    torch.manual_seed(0)
    teacher = build("timm:test_resnet", 10)
    torch.manual_seed(1)
    student = build("timm:test_resnet", 10)
    with torch.no_grad():   # every float entry of the student differs from the teacher's (BN starts at 1 and 0)
        for v in student.state_dict().values():
            if v.is_floating_point():
                v.add_(torch.rand_like(v) + 0.5)
    inherit(student, teacher, ["stem", "head"], ["stem"], {"stem": "conv1", "head": "fc"})
    t, s = teacher.state_dict(), student.state_dict()
    same = {k for k in s if s[k].is_floating_point() and torch.equal(s[k], t[k])}
    named = {k for k in s if k.startswith(("conv1.", "fc.")) and s[k].is_floating_point()}
    assert same == named and "conv1.0.weight" in named and "fc.weight" in named
    frozen = {n for n, p in student.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in student.named_parameters() if n.startswith("conv1.")} and frozen
    with torch.no_grad():   # a copy, not a share
        teacher.fc.weight.add_(1)
    assert not torch.equal(student.fc.weight, teacher.fc.weight)


def test_a_part_path_the_model_lacks_is_a_clear_error():
    a, b = build("timm:test_resnet", 10), build("timm:test_resnet", 10)
    with pytest.raises(ValueError, match=r"parts.stem: .*'stem_conv'.*top-level modules: conv1, bn1"):
        inherit(a, b, ["stem"], [], {"stem": "stem_conv"})


BAD = {   # model (or other keys) -> the message `ban validate` must print at its line
    "nosuch.mod:f": "cannot import 'nosuch.mod': ModuleNotFoundError: No module named 'nosuch'",
    "mynets:raises": "the factory raised RuntimeError: width must be even",
    "mynets:not_a_module": "expected the factory to return an nn.Module, found int",
    "mynets:no_sizes": "expected outputs of shape [batch, 10] (the data set's classes), found [2, 7]",
    "mynets:missing": "module 'mynets' has no attribute 'missing'",
    "timm:no_such_net": "timm 1.",
    "torchvision:resnet18": "torchvision's models take 3-channel images, the data set has 1",
}


def test_ban_validate_exits_2_at_the_line_of_each_bad_reference(package, tmp_path):
    text = "".join(experiment(f"e{i}", m, epochs=1) for i, m in enumerate(BAD))
    text += experiment("p", "mynets:tiny", parts={"stem": "conv1"})
    (tmp_path / "c.toml").write_text(text)
    r = subprocess.run([BAN, "validate", "c.toml"], cwd=tmp_path, env=env_with(package), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.splitlines()
    model_lines = [i + 1 for i, line in enumerate(text.splitlines()) if line.startswith("model =")]
    for (model, message), line in zip(list(BAD.items()) + [("parts", "")], model_lines):
        hit = [x for x in lines if x.startswith(f"c.toml:{line}:")]
        assert hit and (model == "parts" or message in hit[0]), (model, lines)
    assert "'conv1', which it does not have" in "\n".join(lines)
    assert lines[-1] == f"ban: c.toml: {len(BAD) + 1} problems; nothing launched"
    # and `ban run` launches nothing
    r = subprocess.run([BAN, "run", "c.toml", "--all"], cwd=tmp_path, env=env_with(package), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and not (tmp_path / "runs").exists()


def test_a_reference_whose_package_is_not_installed_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)   # as if timm were not installed
    with pytest.raises(spec.SpecError) as err:
        spec.loads(experiment("t", "timm:resnet18"), "c.toml")
    assert str(err.value) == ("c.toml:4:1: experiment[0].model: model 'timm:resnet18' needs timm, which is not "
                              "installed; install it with: pip install 'ban[timm]'")


def test_ban_models_lists_the_reference_forms():
    from typer.testing import CliRunner
    from ban_tui.cli import app
    out = CliRunner().invoke(app, ["models"]).output
    assert all(form in out for form, _ in catalog.REFERENCE_FORMS) and "pip install 'ban[timm]'" in out


def test_reference_syntax_parts_and_kinds_are_checked_without_torch():
    cases = {experiment("a", "my-pkg:f"): "expected a model reference like pkg.module:factory",
             experiment("b", "mynets:tiny", parts={"stem": "conv 1"}): "expected a module path like",
             experiment("c", "mynets:tiny", parts={"neck": "x"}): "parts.neck: unknown key",
             experiment("d", "mynets:tiny", {"name": "ptb", "root": "/x"}): "models by reference are image models"}
    for text, message in cases.items():
        with pytest.raises(spec.SpecError, match=message):
            spec.loads(text, "c.toml")
    assert catalog.parse_reference("a.b:c.d") == ("import", "a.b", "c.d")
    assert catalog.parse_reference("wrn-28-10") is None
    exp = spec.loads(experiment("e", "mynets:tiny", parts={"stem": "0", "head": "4"})).experiments["e"]
    assert [g.parts for g in exp.generations] == [{"stem": "0", "head": "4"}] * 4


def test_the_meta_device_probe_checks_registry_models_parts_too():
    from engine.check import probe
    probe("cnn-small", {}, 10, 1, (8, 8), {"stem": "stem", "head": "head"})
    with pytest.raises(ValueError, match=r"parts.stem: .*'nope'"):
        probe("cnn-small", {}, 10, 1, (8, 8), {"stem": "nope"})
    with pytest.raises(ValueError, match="cannot import 'mynets_absent'"):
        probe("mynets_absent:f", {}, 5, 3, (32, 32), None)
