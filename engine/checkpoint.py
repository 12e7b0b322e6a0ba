"""Files the engine writes: whole or not at all, and checkpoints that load with weights_only=True.

Every file is written to `<name>.tmp` beside its final path, flushed to disk and renamed over it,
so a reader (or a resume after SIGKILL) sees the old file or the new one, never half of one.
Checkpoints hold only tensors and plain Python values (RNG states are ByteTensors), so
`torch.load(path, weights_only=True)` loads them without running any pickled code.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch


def write_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)   # only still there if something failed before the rename


def save(obj, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getvalue())


def load(path: Path, device="cpu"):
    return torch.load(path, map_location=device, weights_only=True)


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
