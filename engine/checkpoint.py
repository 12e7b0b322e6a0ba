"""Files the engine writes: whole or not at all, and checkpoints that load with weights_only=True.

Every file is written to `<name>.tmp` beside its final path, flushed to disk and renamed over it,
so a reader (or a resume after SIGKILL) sees the old file or the new one, never half of one.
Checkpoints hold only tensors and plain Python values (RNG states are ByteTensors), so
`torch.load(path, weights_only=True)` loads them without running any pickled code.
"""
from __future__ import annotations

import io
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


def rng_state() -> dict:
    """The global torch RNG states (CPU and every CUDA device), as tensors."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
