"""The invariants of the CUDA paths that can be shown on a CPU (issue 30; docs/gpu.md): optimizer
state re-laid to its params' strides after a resume; every rank's RNG streams saved and restored
by that rank, whatever the number of visible GPUs; one download under DDP; per-rank DKPP
generators; cuda:N checked against the visible GPUs; the kernel flags (TF32, determinism) read
back from torch; last.pt written from a snapshot. bench/device_check.sh runs the GPU side.

The 2-process tests are real torchrun runs over gloo. Where no CUDA device exists, the rank RNG
test stands in for the CUDA RNG API only (torch.cuda.get_rng_state / set_rng_state, one CPU
generator per "visible" GPU, IndexError past the last one as CUDA raises): the code under test
is the real one, and with two GPUs present it runs on them instead."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from engine import checkpoint, hardware, scheduler, spec
from engine.context import Context, derive_seed
from engine.events import read_events
from engine.generation import Progress, build_student, restore, step_parts
from engine.runs import RunPaths
from engine.tasks.image import ImageClassifier
from engine.data import load
from helpers import SGD, digits_chain

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
CPU = torch.device("cpu")


def torchrun(tmp_path, script: str, *args, nproc: int = 2) -> subprocess.CompletedProcess:
    (tmp_path / "script.py").write_text(textwrap.dedent(script))
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            str(tmp_path / "script.py"), *map(str, args)]
    return subprocess.run(argv, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)


# ---- the optimizer state's layout after a resume --------------------------------------------

def test_after_a_resume_every_optimizer_state_tensor_has_its_params_strides(tmp_path):
    """A last.pt of a contiguous cnn-small (the CPU) resumed channels-last (as on a GPU): the
    momentum buffers take the params' strides, which CUDA's fused SGD requires."""
    def generation(channels_last):
        text = digits_chain("c", optimizer=SGD, device="cpu", precision="fp32", channels_last=channels_last, epochs=1)
        exp = spec.loads(text).experiments["c"]
        ctx = Context(exp=exp, seed=0, paths=RunPaths(tmp_path), device=CPU)
        task = ImageClassifier(load(exp.dataset, 0))
        model = build_student(ctx, exp.generations[0], None, task)
        return ctx, model, step_parts(exp.generations[0], model, 0, CPU)

    ctx, model, parts = generation(False)
    x = torch.randn(4, 1, 8, 8)
    model(x).sum().backward()
    parts.optimizer.step()
    last = {"state_dict": model.state_dict(), "optimizer": parts.optimizer.state_dict(), "epoch": 1, "step": 0,
            "history": [], "best": {}, "rng": {0: checkpoint.rng_state(CPU)}}

    ctx, model, parts = generation(True)
    convs = [p for p in model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert any(not p.is_contiguous() for p in convs)
    plain = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    plain.load_state_dict(last["optimizer"])   # what load_state_dict alone leaves: the saved layout
    assert any(plain.state[p]["momentum_buffer"].stride() != p.stride() for p in convs)

    assert isinstance(restore(ctx, last, model, parts), Progress)
    state = parts.optimizer.state
    assert len(state) == len(list(model.parameters()))
    for p in model.parameters():
        buf = state[p]["momentum_buffer"]
        assert buf.stride() == p.stride() and buf.dtype == p.dtype
    for p, q in zip(model.parameters(), plain.state):
        assert torch.equal(state[p]["momentum_buffer"], plain.state[q]["momentum_buffer"])   # values kept


# ---- per-rank RNG state ---------------------------------------------------------------------

RNG_SCRIPT = """
    import sys
    from pathlib import Path
    import torch
    from engine import checkpoint, ddp

    phase, path, visible = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rank = ddp.from_env()[0]
    if not torch.cuda.is_available():   # stand-in for the CUDA RNG API only: one generator per visible GPU
        gens = [torch.Generator().manual_seed(1000 + i) for i in range(visible)]
        torch.cuda.get_rng_state = lambda device="cuda": gens[torch.device(device).index or 0].get_state()
        torch.cuda.set_rng_state = lambda state, device="cuda": gens[torch.device(device).index or 0].set_state(state)
        cuda_draw = lambda device: torch.rand(4, generator=gens[device.index or 0])
    else:
        cuda_draw = lambda device: torch.rand(4, device=device).cpu()
    ddp.init(torch.device("cpu"))                            # gloo between the ranks
    device = torch.device("cuda", rank if visible > 1 else 0)  # one GPU each: a slot's narrowed view
    dkpp = torch.Generator().manual_seed(50 + rank)
    draw = lambda: torch.cat([torch.rand(4), cuda_draw(device), torch.rand(4, generator=dkpp)])
    if phase == "save":
        torch.manual_seed(10 + rank)
        torch.cuda.set_rng_state(torch.Generator().manual_seed(20 + rank).get_state(), device)
        draw()
        states = checkpoint.rank_rng_states(device, dkpp)
        if rank == 0:
            checkpoint.save({"rng": states}, Path(path))
        torch.save(draw(), f"{path}.expected-{rank}")
    else:
        torch.manual_seed(99)
        ddp.barrier()
        checkpoint.set_rng_state(checkpoint.own_rng_state(checkpoint.load(Path(path)), rank), device, dkpp)
        torch.save(draw(), f"{path}.{phase}-{rank}")
    ddp.shutdown()
"""


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.device_count() < 2, reason="needs 2 GPUs or none")
def test_each_rank_saves_and_restores_its_own_rng_streams_with_any_number_of_visible_gpus(tmp_path):
    path = tmp_path / "last.pt"
    saved = torchrun(tmp_path, RNG_SCRIPT, "save", path, 2)
    assert saved.returncode == 0, saved.stderr[-3000:]
    expected = [torch.load(f"{path}.expected-{r}") for r in (0, 1)]
    assert not torch.equal(expected[0], expected[1])   # the ranks' streams differ
    states = torch.load(path, weights_only=True)["rng"]
    assert sorted(states) == [0, 1] and all(sorted(s) == ["cuda", "dkpp", "torch"] for s in states.values())

    # resumed with one visible GPU per rank (each on cuda:0), then by one process (rank 0 only)
    again = torchrun(tmp_path, RNG_SCRIPT, "narrow", path, 1)
    assert again.returncode == 0, again.stderr[-3000:]
    alone = torchrun(tmp_path, RNG_SCRIPT, "alone", path, 1, nproc=1)
    assert alone.returncode == 0, alone.stderr[-3000:]
    for r in (0, 1):
        assert torch.equal(torch.load(f"{path}.narrow-{r}"), expected[r])
    assert torch.equal(torch.load(f"{path}.alone-0"), expected[0])


def test_a_rank_the_checkpoint_has_no_state_for_keeps_its_seeded_streams_and_cuda_state_is_dropped_on_the_cpu():
    torch.manual_seed(7)
    state = checkpoint.rng_state(CPU)
    assert sorted(state) == ["torch"]
    torch.manual_seed(8)
    before = torch.get_rng_state()
    checkpoint.set_rng_state(checkpoint.own_rng_state({"rng": {0: state}}, 1), CPU)
    assert torch.equal(torch.get_rng_state(), before)
    checkpoint.set_rng_state({**state, "cuda": torch.zeros(16, dtype=torch.uint8)}, CPU)   # a GPU's, on the CPU
    assert torch.equal(torch.get_rng_state(), state["torch"])
    old = {"rng": {"torch": state, "cuda": [torch.zeros(1)]}, "dkpp": state}   # a last.pt from before ranks
    assert sorted(checkpoint.own_rng_state(old, 0)) == ["dkpp", "torch"] and checkpoint.own_rng_state(old, 1) is None


def test_dkpp_generators_differ_between_ranks_and_rank_0_keeps_the_one_process_seed():
    exp = spec.loads(digits_chain("d", generations=1, objective="dkpp", device="cpu")).experiments["d"]
    gen, model = exp.generations[1], torch.nn.Linear(2, 2)
    draws = [torch.rand(8, generator=step_parts(gen, model, 5, CPU, rank).dkpp) for rank in (0, 1, 2)]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    assert torch.equal(draws[0], torch.rand(8, generator=torch.Generator().manual_seed(derive_seed(5, "dkpp"))))


# ---- one download under DDP -----------------------------------------------------------------

DOWNLOAD_SCRIPT = """
    import pickle, sys
    import numpy as np
    from pathlib import Path
    from engine import ddp, spec
    from engine.data import images

    root, fail = Path(sys.argv[1]), sys.argv[2] == "fail"

    def fake_fetch(name, where):   # counts its calls, then writes torchvision's CIFAR-10 pickles
        with open(root / "calls", "a") as f:
            f.write(f"{ddp.rank()}\\n")
        if fail:
            raise OSError("no route to host")
        base = where / "cifar-10-batches-py"
        base.mkdir(parents=True)
        for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
            data = np.full((4, 3072), i, dtype=np.uint8)
            (base / name).write_bytes(pickle.dumps({"data": data, "labels": [0, 1, 2, 3]}))

    images.fetch_cifar = fake_fetch
    ddp.init(images.torch.device("cpu"))
    try:
        data = images.load_images(spec.Dataset("cifar10", root=str(root / "data"), download=True), 0)
        (root / f"rank-{ddp.rank()}").write_text(str(len(data.train_x)))
    except images.DataError as exc:
        (root / f"rank-{ddp.rank()}").write_text(str(exc))
    ddp.shutdown()
"""


@pytest.mark.parametrize("mode", ["ok", "fail"])
def test_only_rank_0_downloads_and_every_rank_learns_the_outcome(tmp_path, mode):
    done = torchrun(tmp_path, DOWNLOAD_SCRIPT, tmp_path, mode)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "calls").read_text() == "0\n"
    outcome = [(tmp_path / f"rank-{r}").read_text() for r in (0, 1)]
    if mode == "ok":
        assert outcome == ["20", "20"]   # 5 training batches of 4 images, on both ranks
    else:
        assert outcome[0] == outcome[1] and "cifar10: download into" in outcome[0] and "no route to host" in outcome[0]


# ---- the device a slot gives ----------------------------------------------------------------

def test_a_cuda_index_is_checked_against_the_gpus_the_slot_leaves_visible():
    hardware.check_device_index(torch.device("cuda"), 1, "3")
    hardware.check_device_index(torch.device("cuda:0"), 1, "3")
    hardware.check_device_index(torch.device("cpu"), 0, None)
    with pytest.raises(ValueError) as exc:
        hardware.check_device_index(torch.device("cuda:3"), 1, "3")
    assert str(exc.value) == ("device: expected cuda or cuda:0..cuda:0 (this process sees 1 GPU(s), "
                              "CUDA_VISIBLE_DEVICES=3; an index counts the visible GPUs, not the machine's), found 'cuda:3'")
    with pytest.raises(ValueError, match="sees 2 GPU.s., CUDA_VISIBLE_DEVICES unset.*found 'cuda:2'"):
        hardware.check_device_index(torch.device("cuda:2"), 2, None)


def test_every_engine_the_scheduler_starts_numbers_gpus_in_pci_order():
    for taken in (["gpu3"], ["gpu0", "gpu2"], ["cpu0"]):
        assert scheduler.slot_env(taken, 4)["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert scheduler.slot_env(["gpu0", "gpu2"], 4)["CUDA_VISIBLE_DEVICES"] == "0,2"


# ---- kernel flags ---------------------------------------------------------------------------

@pytest.fixture
def kernels_restored():
    flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags[2:]
    hardware.configure_kernels(CPU)   # TF32 back off (the engine's default)


def test_fp32_is_not_tf32_unless_asked_and_deterministic_sets_every_flag(kernels_restored):
    cuda = torch.device("cuda")   # the flags are process-wide settings: they read back without a GPU
    assert hardware.configure_kernels(cuda) == {
        "deterministic": False, "cudnn_deterministic": False, "cudnn_benchmark": True,
        "tf32_matmul": False, "tf32_conv": False, "tf32_rnn": False}
    assert not torch.are_deterministic_algorithms_enabled()
    assert hardware.configure_kernels(cuda, allow_tf32=True) | {"cudnn_benchmark": None} == {
        "deterministic": False, "cudnn_deterministic": False, "cudnn_benchmark": None,
        "tf32_matmul": True, "tf32_conv": True, "tf32_rnn": True}
    assert hardware.configure_kernels(cuda, deterministic=True) == {
        "deterministic": True, "cudnn_deterministic": True, "cudnn_benchmark": False,
        "tf32_matmul": False, "tf32_conv": False, "tf32_rnn": False}
    assert not torch.is_deterministic_algorithms_warn_only_enabled() and os.environ["CUBLAS_WORKSPACE_CONFIG"]
    if hardware.NEW_TF32_API:
        assert torch.backends.cudnn.conv.fp32_precision == "ieee" == torch.backends.cuda.matmul.fp32_precision
    else:
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    cpu = hardware.configure_kernels(CPU)
    assert cpu["deterministic"] and torch.is_deterministic_algorithms_warn_only_enabled() and not cpu["cudnn_benchmark"]


@pytest.mark.parametrize("line, message", [
    ('deterministic = "yes"', "c.toml:{n}:1: experiment[0].deterministic: expected true or false, found string 'yes'"),
    ("allow_tf32 = 1", "c.toml:{n}:1: experiment[0].allow_tf32: expected true or false, found integer 1")])
def test_kernel_options_are_checked_with_file_and_line(tmp_path, line, message):
    text = digits_chain("k", epochs=1) + line + "\n"
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(spec.SpecError) as exc:
        spec.load(tmp_path / "c.toml")
    assert [str(p).replace(str(tmp_path) + "/", "") for p in exc.value.problems] == [
        message.format(n=text.count("\n"))]


def test_a_deterministic_engine_run_on_the_cpu_records_its_kernels(tmp_path):
    text = digits_chain("det", epochs=1, generations=2, objective="dkpp", ensembles=[2], device="cpu",
                        dataset={"options": {"train_images": 200}}, deterministic=True)
    (tmp_path / "c.toml").write_text(text)
    done = subprocess.run([sys.executable, "-m", "engine", "run", "c.toml", "--experiment", "det", "--runs-dir", "runs",
                           "--run-id", "r"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    events = read_events(tmp_path / "runs" / "det" / "r" / "events.jsonl")
    assert events[0]["kernels"] == {"deterministic": True, "cudnn_deterministic": True, "cudnn_benchmark": False,
                                    "tf32_matmul": False, "tf32_conv": False, "tf32_rnn": False}
    assert events[-1]["status"] == "ok" and spec.load(tmp_path / "runs" / "det" / "r" / "experiment.toml") \
        .experiments["det"].deterministic is True


# ---- last.pt from a snapshot ----------------------------------------------------------------

def test_a_background_save_writes_the_snapshot_not_what_training_did_next(tmp_path):
    weights = torch.zeros(1000)
    saver, announced = checkpoint.BackgroundSaver(), []
    saver.save({"w": weights, "history": [1]}, tmp_path / "last.pt", then=lambda: announced.append("epoch"))
    weights += 1   # the next step, while the file may still be being written
    saver.wait()
    assert announced == ["epoch"]
    saved = checkpoint.load(tmp_path / "last.pt")
    assert torch.equal(saved["w"], torch.zeros(1000)) and saved["history"] == [1]
    (tmp_path / "file").write_text("")
    saver.save({"w": weights}, tmp_path / "file" / "last.pt", then=lambda: announced.append("never"))
    with pytest.raises(OSError):
        saver.wait()   # an error of the write is raised where training waits for it
    assert announced == ["epoch"]
    saver.wait()   # raised once
