"""Files the engine writes: whole or not at all, and checkpoints that load with weights_only=True.

Every file is written to `<name>.tmp` beside its final path, flushed to disk and renamed over it,
so a reader (or a resume after SIGKILL) sees the old file or the new one, never half of one.
Checkpoints hold only tensors and plain Python values (RNG states are ByteTensors), so
`torch.load(path, weights_only=True)` loads them without running any pickled code.
"""
from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import torch

from engine.runs import write_atomic  # noqa: F401 - the one atomic write, torch-free for launchers


def save(obj, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getvalue())


class FileError(Exception):
    """A checkpoint or probabilities file that cannot be read back (truncated, corrupt, not
    readable); the message names the file, in one line."""


def _unreadable(path: Path, what: str, exc: Exception) -> FileError:
    reason = " ".join(str(exc).split())[:160] or type(exc).__name__
    return FileError(f"{path}: cannot read the {what} ({reason}); it is truncated or corrupt: "
                     f"delete it and resume to compute it again")


def load(path: Path, device="cpu"):
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:   # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError...
        raise _unreadable(path, "checkpoint", exc) from exc


def load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:   # noqa: BLE001 - ValueError, EOFError, OSError
        raise _unreadable(path, "probabilities", exc) from exc


def save_npy(array: np.ndarray, path: Path) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    write_atomic(path, buf.getvalue())


def write_text(path: Path, text: str) -> None:
    write_atomic(path, text.encode())


def rng_state(device: torch.device, dkpp: torch.Generator | None = None) -> dict:
    """This process's RNG states as tensors: the CPU generator's, its own GPU's (only that one:
    under DDP every rank draws from its own device) and DKPP's generator's when there is one."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    if dkpp is not None:
        state["dkpp"] = dkpp.get_state()
    return state


def rank_rng_states(device: torch.device, dkpp: torch.Generator | None = None) -> dict | None:
    """{rank: rng_state of that rank} on rank 0 (None on the others): every rank's own streams,
    collected so that rank 0 saves them in one file."""
    from engine import ddp
    states = ddp.gather_object(rng_state(device, dkpp))
    return None if states is None else dict(enumerate(states))


def set_rng_state(state: dict | None, device: torch.device, dkpp: torch.Generator | None = None) -> None:
    """Restore what rng_state saved, on this process's device (whatever its index, and however many
    GPUs are visible now). None (a rank the checkpoint has no state for: another world size) keeps
    the streams as the epoch's seed set them. A CUDA state resumed on the CPU is dropped (and a CPU
    state on a GPU leaves the GPU's stream as seeded)."""
    if state is None:
        return
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    if dkpp is not None and "dkpp" in state:
        dkpp.set_state(state["dkpp"])


def own_rng_state(last: dict, rank: int) -> dict | None:
    """This rank's entry of last.pt's RNG states (None: the file has none for it). A last.pt from
    before they were kept by rank holds one process's states, with every GPU's: its CPU and DKPP
    states are rank 0's, its CUDA ones are dropped."""
    states = last["rng"]
    if "torch" not in states:
        return states.get(rank)
    return {"torch": states["torch"], **({"dkpp": last["dkpp"]} if "dkpp" in last else {})} if rank == 0 else None


def cpu_copy(obj):
    """obj with every tensor copied to the CPU and every dict, list and tuple rebuilt: a snapshot
    that training can go on changing the originals of (checkpoints written in the background)."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


class BackgroundSaver:
    """Writes one checkpoint at a time from a thread, from a snapshot (`cpu_copy`), then runs
    `then` (the event that announces it), so a crash still never loses what an event announced;
    the next save, `wait` or an error waits for the one in flight."""

    def __init__(self):
        self.thread, self.error = None, None

    def save(self, obj, path: Path, then=None) -> None:
        self.wait()
        snapshot = cpu_copy(obj)

        def write():
            try:
                save(snapshot, path)
                if then is not None:
                    then()
            except BaseException as exc:   # noqa: BLE001 - raised in the training thread by wait()
                self.error = exc
        self.thread = threading.Thread(target=write, name="checkpoint", daemon=True)
        self.thread.start()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error
