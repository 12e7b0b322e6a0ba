"""Distributed data parallel (DDP) plumbing: one process per GPU, started by torchrun.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them the engine is one process and every
function here is a no-op. Only rank 0 writes (events, checkpoints, probabilities, results); the
other ranks train their share of every batch and follow rank 0's decisions (run id, stop).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def from_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) as torchrun set them; (0, 1, 0) outside torchrun."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def init(device: torch.device) -> None:
    """Join the process group: NCCL between GPUs, gloo between CPU processes. On a GPU the rank's
    device is made current first and named to the group (`device_id`), as PyTorch's DDP notes ask:
    otherwise every rank's collectives (broadcast_object_list, barrier) use cuda:0 and NCCL stops
    with "Duplicate GPU detected"."""
    if from_env()[1] > 1 and not active():
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")


def rank() -> int:
    return dist.get_rank() if active() else from_env()[0]


def broadcast_object(obj):
    """Rank 0's value of obj, on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_object(obj) -> list | None:
    """[every rank's obj, by rank] on rank 0, None on the others; [obj] with one process."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_reduce(values: list[float], device: torch.device, op: str = "sum") -> list[float]:
    """Element-wise sum (or max) of a list of numbers over the ranks; one collective."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64 if device.type != "mps" else torch.float32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Rank 0's BatchNorm running statistics on every rank (each rank's own batches moved them
    apart), so that every rank evaluates, and rank 0 saves, the same model."""
    if active():
        for b in model.buffers():
            dist.broadcast(b, src=0)


def barrier() -> None:
    if active():   # NCCL's barrier on this rank's GPU (not on cuda:0)
        dist.barrier(device_ids=[torch.cuda.current_device()] if dist.get_backend() == "nccl" else None)


def shutdown() -> None:
    if active():
        dist.destroy_process_group()
