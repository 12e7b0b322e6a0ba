"""engine/hardware.py: what precision = "auto" and channels_last = None resolve to, the engine's
thread count, and bf16 autocast on the CPU for real: a kill -9 resume under bf16 gives the numbers
of an uninterrupted bf16 run, and a chain under auto with the bf16 check forced on trains in bf16
(loss falls) on digits. The capability check is forced both ways with BAN_FORCE_CPU_BF16."""
import os
import signal

import numpy as np
import pytest
import torch

import test_engine_process as tep
from engine import chain, hardware, spec
from engine.events import EventWriter, read_events
from engine.runs import RunPaths
from engine.context import Context
from engine.optim import autocast_dtype
from test_engine_process import epochs_of, failed_run, finish, numbers, run_chain, start, wait_for
from helpers import SGD, digits_chain, held, hold

CPU, CUDA = torch.device("cpu"), torch.device("cuda")

BF16_CHAIN = digits_chain("chain", batch_size=64, optimizer=SGD, schedule="cosine", precision="bf16", seeds=[3],
                          device="cpu", generations_tables=({"objective": "ce", "epochs": 1},
                                                            {"objective": "ban", "epochs": 2, "grad_clip": 5.0}))


# ---- what auto resolves to ----------------------------------------------------------------

@pytest.mark.parametrize("forced, expected", [("1", "bf16"), ("0", "fp32")])
def test_auto_is_bf16_on_the_cpu_only_where_the_check_says_so(monkeypatch, forced, expected):
    monkeypatch.setenv(hardware.FORCE_BF16, forced)
    assert hardware.cpu_bf16_capable() is (forced == "1")
    for model in ("cnn-small", "preact-resnet-8", "wrn-16-2", None):
        assert hardware.resolve_precision("auto", CPU, model) == expected
    assert autocast_dtype("auto", CPU, "preact-resnet-8") == (torch.bfloat16 if forced == "1" else None)
    assert hardware.resolve_precision("auto", CPU, "lstm-2x200") == "fp32"   # LMs: not measured, fp32
    assert hardware.resolve_precision("auto", CUDA, "cnn-small") == "bf16"   # CUDA as before
    assert hardware.resolve_precision("auto", torch.device("mps"), "cnn-small") == "fp32"
    for explicit in ("fp32", "bf16", "fp16"):   # written precisions are kept on every device
        assert hardware.resolve_precision(explicit, CPU, "cnn-small") == explicit
        assert hardware.resolve_precision(explicit, CUDA, "cnn-small") == explicit


def test_unforced_check_is_onednn_bf16_and_bf16_instructions(monkeypatch):
    monkeypatch.delenv(hardware.FORCE_BF16, raising=False)
    caps = torch.cpu.get_capabilities()
    hardware_bf16 = any(caps.get(k, False) for k in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))
    assert hardware.cpu_bf16_capable() is (bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and hardware_bf16)
    monkeypatch.setenv(hardware.FORCE_BF16, "yes")
    with pytest.raises(ValueError, match="BAN_FORCE_CPU_BF16: expected 0 or 1, found 'yes'"):
        hardware.cpu_bf16_capable()


def test_channels_last_default():
    assert hardware.channels_last(None, CPU, "preact-resnet-8") and hardware.channels_last(None, CPU, "wrn-16-2")
    assert not hardware.channels_last(None, CPU, "cnn-small")   # measured slower on 8x8 digits
    assert hardware.channels_last(None, CUDA, "cnn-small")
    assert hardware.channels_last(True, CPU, "cnn-small") and not hardware.channels_last(False, CUDA, "wrn-16-2")


def test_intra_op_threads_from_slots_then_omp_then_affinity():
    assert hardware.intra_op_threads({"BAN_THREADS": "3", "OMP_NUM_THREADS": "1"}) == (3, "BAN_THREADS")
    assert hardware.intra_op_threads({"OMP_NUM_THREADS": "2"}) == (2, "OMP_NUM_THREADS")
    cpus = len(os.sched_getaffinity(0))
    assert hardware.intra_op_threads({}) == (cpus, "affinity")
    assert hardware.intra_op_threads({"LOCAL_WORLD_SIZE": str(cpus * 2)}) == (1, "affinity")
    for bad in ("0", "two", "-1"):
        with pytest.raises(ValueError, match=f"BAN_THREADS: expected a positive integer, found '{bad}'"):
            hardware.intra_op_threads({"BAN_THREADS": bad})


def test_bad_ban_threads_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(tep.ENV, "BAN_THREADS", "many")
    root, proc = tep.launched(tmp_path, BF16_CHAIN)
    failed_run(root, proc, 2, "BAN_THREADS", "'many'")


def test_a_run_records_what_it_resolved_to_and_bf16_and_fp32_runs_are_never_pooled(tmp_path, monkeypatch):
    """The same config under precision = "auto", run by the engine with the bf16 check forced on
    and off: run_start and the snapshot say bf16 / fp32, the device's model, threads and versions;
    the config hashes differ and `ban report` gives two groups, not one seed replacing the other."""
    from ban_tui import report
    text = digits_chain("chain", epochs=1, batch_size=64, optimizer=SGD, seeds=[3], device="cpu", generations=1)
    starts = {}
    for forced in ("1", "0"):
        monkeypatch.setitem(tep.ENV, hardware.FORCE_BF16, forced)
        (tmp_path / forced).mkdir()
        rc, err = finish(run_chain(tmp_path / forced, "r" + forced, text), timeout=900)
        assert rc == 0, err
        root = tmp_path / forced / "runs" / "chain" / ("r" + forced)
        start = read_events(root / "events.jsonl")[0]
        want = "bf16" if forced == "1" else "fp32"
        assert start["resolved"] == {"device_type": "cpu", "generations": [
            {"precision": want, "channels_last": False, "compile": False}] * 2}
        assert start["machine"]["cpu"] == hardware.cpu_model() and start["machine"]["cpu_bf16"] is (forced == "1")
        assert start["machine"]["cpu_bf16_forced"] == forced and start["threads"] == 1
        assert start["versions"]["torch"] == torch.__version__ and start["versions"]["numpy"] == np.__version__
        assert start["versions"]["torchvision"]
        snapshot = (root / "experiment.toml").read_text()
        assert f"gen 0: {want}, channels_last false, compile false" in snapshot and hardware.cpu_model() in snapshot
        assert spec.loads(snapshot).experiments["chain"].generations[0].training.precision == "auto"
        starts[forced] = (start, root)
    assert starts["1"][0]["config_hash"] != starts["0"][0]["config_hash"]
    rep = report.collect([starts["1"][1], starts["0"][1]])
    assert sorted(e["runs"][0] for e in rep["experiments"]) == ["chain/r0", "chain/r1"]
    assert rep["dropped"] == []


# ---- bf16 autocast on the CPU, for real -----------------------------------------------------

def test_sigkill_then_resume_under_bf16_gives_the_numbers_of_an_uninterrupted_bf16_run(tmp_path, monkeypatch):
    monkeypatch.setitem(tep.ENV, "BAN_THREADS", "1")
    (tmp_path / "ref").mkdir()
    rc, err = finish(run_chain(tmp_path / "ref", "ref", BF16_CHAIN), timeout=900)
    assert rc == 0, err
    reference = read_events(tmp_path / "ref" / "runs" / "chain" / "ref" / "events.jsonl")
    assert reference[0]["threads"] == 1 and reference[0]["threads_from"] == "BAN_THREADS"

    (tmp_path / "cut").mkdir()
    root = tmp_path / "cut" / "runs" / "chain" / "cut"
    gate = hold(root.parent, "1 1")   # held after BAN-1's first epoch: killed there by construction
    proc = run_chain(tmp_path / "cut", "cut", BF16_CHAIN)
    wait_for(root, lambda ev: held(root, gen=1), proc, timeout=900)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gate.unlink()
    assert torch.load(root / "checkpoints" / "last.pt", weights_only=True)["gen"] == 1
    rc, err = finish(start(tmp_path / "cut", "resume", root), timeout=900)
    assert rc == 0, err
    events = read_events(root / "events.jsonl")
    assert [e["resumed"] for e in events if e["kind"] == "run_start"] == [False, True]
    assert numbers(events) == numbers(reference)
    assert len(epochs_of(events, 1)) == 2


def test_a_chain_under_auto_trains_in_bf16_where_forced(tmp_path, monkeypatch):
    """BAN_FORCE_CPU_BF16=1: the same config with precision = "auto" runs its convolutions in
    bf16, and both generations learn; =0: fp32 throughout."""
    text = BF16_CHAIN.replace('precision = "bf16"', 'precision = "auto"').replace("epochs = 1\n", "epochs = 2\n")
    seen = {}

    def record(module, args, out):
        if isinstance(module, torch.nn.Conv2d) and module.training:
            seen.setdefault(os.environ[hardware.FORCE_BF16], set()).add(out.dtype)
    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        for forced in ("1", "0"):
            monkeypatch.setenv(hardware.FORCE_BF16, forced)
            root = tmp_path / forced
            root.mkdir()
            exp = spec.loads(text).experiments["chain"]
            ctx = Context(exp=exp, seed=3, paths=RunPaths(root), device=CPU, events=EventWriter(RunPaths(root).events, "r"))
            chain.run_chain(ctx)
            ctx.events.close()
            events = read_events(RunPaths(root).events)
            for gen in (0, 1):
                losses = [e["train_loss"] for e in epochs_of(events, gen)]
                assert len(losses) == exp.generations[gen].training.epochs and losses[-1] < losses[0], losses
                assert epochs_of(events, gen)[-1]["test_err"] < 0.85   # chance: 0.9
    finally:
        handle.remove()
    assert seen == {"1": {torch.bfloat16}, "0": {torch.float32}}
