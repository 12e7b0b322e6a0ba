"""How long an epoch's last.pt holds training up: written in place (torch.save, fsync, rename)
against engine.checkpoint.BackgroundSaver (the snapshot is taken in the training thread, the file
written in another), for a model's weights and SGD momentum, side by side (interleaved, repeated).

    .venv/bin/python bench/checkpoint_stall.py [--model wrn-28-10] [--repeats 3] [--device cpu] [--dir /tmp]

Prints the seconds training waits for each (median) and their ratio, and the background write's
own seconds (which overlap the next epoch's steps).
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from engine import checkpoint, models


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="wrn-28-10")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dir", default=tempfile.gettempdir())
    args = ap.parse_args()
    device = torch.device(args.device)
    model = models.build(args.model, num_classes=10, in_channels=3).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
    state = {"state_dict": model.state_dict(), "optimizer": opt.state_dict()}
    mb = sum(t.numel() * t.element_size() for t in checkpoint.cpu_copy(state)["state_dict"].values()) * 2 / 1e6
    saver, inline, stall, write = checkpoint.BackgroundSaver(), [], [], []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "last.pt"
        for r in range(args.repeats):
            for way in (("inline", "background") if r % 2 else ("background", "inline")):
                t0 = time.perf_counter()
                if way == "inline":
                    checkpoint.save(checkpoint.cpu_copy(state) if device.type != "cpu" else state, path)
                    inline.append(time.perf_counter() - t0)
                else:
                    saver.save(state, path)
                    stall.append(time.perf_counter() - t0)
                    saver.wait()
                    write.append(time.perf_counter() - t0)
    print(f"last.pt of {args.model} + momentum ({mb:.0f} MB) on {device}, {args.repeats} repeats, into {args.dir}:")
    print(f"  training waits: in place {statistics.median(inline):.3f} s, background {statistics.median(stall):.3f} s "
          f"(snapshot), ratio {statistics.median(stall) / statistics.median(inline):.3f}x; "
          f"the background write takes {statistics.median(write):.3f} s beside the next steps")


if __name__ == "__main__":
    main()
