"""(c) CUDA: training images/s of WRN-28-10 and DenseNet-BC-90-60 on the engine's fast path
against a plain fp32 torchvision DataLoader loop, side by side, as ratios (goal: >= 2x).

    .venv/bin/python bench/gpu_throughput.py [--models wrn-28-10 densenet-bc-90-60] [--batch-size 128]
                                             [--steps 30] [--workers 8] [--compile] [--repeats 1]
    .venv/bin/python bench/gpu_throughput.py --smoke   # the CPU, tiny models: proves the code runs

fast: `engine.generation.train_generation` (helpers from bench/step_overhead.py) as it runs on CUDA by
default: the whole uint8 set on the device with crop/flip/normalise there (engine.data.Batches),
bf16 autocast, channels_last, fused SGD; with --compile also a row with torch.compile.
plain: the usual recipe: torchvision transforms (reflect-pad-4 random crop, flip, ToTensor,
Normalize) on PIL images in DataLoader workers with pinned memory, the model in fp32 and the
default layout, torch.optim.SGD's default (foreach) update, F.cross_entropy.
Both: the same model, batch, optimizer settings and images (the first steps x batch real
CIFAR-10 images of ../shared/data/cifar10/train.npz), cuDNN autotuning and no TF32 (so the plain
loop is true fp32) as the engine process sets them (engine.hardware.configure_kernels); 2 epochs each, images/s of the second (the first warms up: cudnn
autotuning, workers, compilation). Only the training loop is timed.
Without CUDA it says so and exits 0, unless --smoke.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision.transforms as T

from data_path import PILImages
from engine import hardware, models
from step_overhead import cifar10, experiment, interleaved, run_engine, sync


def plain_images_per_s(exp, data, device, workers: int, epochs: int = 2) -> float:
    """Images/s of the last of `epochs` epochs of a plain fp32 DataLoader training loop."""
    t = exp.generations[0].training
    torch.manual_seed(0)
    model = models.build(exp.generations[0].model, data.num_classes, data.in_channels).to(device).train()
    o = t.optimizer
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                          weight_decay=o.weight_decay)
    tf = T.Compose([T.RandomCrop(32, padding=4, padding_mode="reflect"), T.RandomHorizontalFlip(),
                    T.ToTensor(), T.Normalize(data.mean, data.std)])
    x_hwc = data.train_x.permute(0, 2, 3, 1).contiguous().numpy()
    loader = torch.utils.data.DataLoader(PILImages(x_hwc, data.train_y.numpy(), tf), batch_size=t.batch_size,
                                         shuffle=True, num_workers=workers, pin_memory=device.type == "cuda",
                                         persistent_workers=workers > 0, drop_last=False)
    for _ in range(epochs):
        t0, n = time.perf_counter(), 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += len(x)
        sync(device)
        rate = n / (time.perf_counter() - t0)
    return rate


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["wrn-28-10", "densenet-bc-90-60"])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30, help="steps per epoch")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--compile", action="store_true", help="also time the fast path with torch.compile")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="run on the CPU with tiny models and sizes")
    args = ap.parse_args()
    if args.smoke:
        device = torch.device("cpu")
        args.models, args.batch_size, args.steps, args.workers = ["wrn-10-1", "densenet-bc-16-8"], 16, 2, 2
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        print("(c) gpu_throughput: skipped: no CUDA device here (it measures the CUDA fast path; "
              "--smoke runs the code on the CPU with tiny models)")
        return
    else:
        device = torch.device("cuda")
        hardware.configure_kernels(device)   # as the engine process sets them: cuDNN autotuning, no TF32
    data = cifar10(args.steps * args.batch_size, 256)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke)"
    print(f"(c) fast path vs plain fp32 DataLoader: batch {args.batch_size}, {args.steps} steps/epoch, "
          f"{args.workers} workers, {name}, data {data.name}, torch {torch.__version__}", flush=True)
    print(f"{'model':<20} {'fast img/s':>11} {'plain img/s':>12} {'ratio':>7}" +
          (f" {'compiled img/s':>15} {'ratio':>7}" if args.compile else ""), flush=True)
    for model in args.models:
        exp = experiment(model, args.batch_size, epochs=2)
        contenders = {"fast": lambda: run_engine(exp, data, 0, None, device)[1][-1]["samples_per_s"],
                      "plain": lambda: plain_images_per_s(exp, data, device, args.workers)}
        if args.compile:
            compiled = experiment(model, args.batch_size, epochs=2, compile=True)
            contenders["compiled"] = lambda: run_engine(compiled, data, 0, None, device)[1][-1]["samples_per_s"]
        rates = {k: statistics.median(v) for k, v in interleaved(contenders, args.repeats, warmup=False).items()}
        line = f"{model:<20} {rates['fast']:>11,.0f} {rates['plain']:>12,.0f} {rates['fast'] / rates['plain']:>6.2f}x"
        if args.compile:
            line += f" {rates['compiled']:>15,.0f} {rates['compiled'] / rates['plain']:>6.2f}x"
        print(line + "   (goal >= 2x)", flush=True)


if __name__ == "__main__":
    main()
