"""Image classification: what an image generation does differently (engine/generation.py owns
the rest).

Per step: the student's forward on the augmented batch; the teacher's forward on the same batch,
in eval mode under inference_mode and the same precision (or its cached logits, see
`teacher_outputs`); the objective; backward; SGD. Train loss/err and the gradient diagnostics are
running sums over the epoch, from the logits the step already has (no extra forward pass), read
back from the device every READ_BACK_STEPS steps. After each epoch: val (if any) and test
loss/err. The headline is the last epoch's test error; the test set never chooses anything.
After the last epoch, once: the training set in eval mode, unaugmented (`fit`: train_eval_loss,
train_eval_err in gen_end's final), the fit criterion; train_err is the running train-mode error.

DDP (torchrun, world_size > 1): every rank draws the same global batch of `batch_size` and
trains on its 1/world_size slice; the loss is weighted so that DDP's gradient average equals the
one-process gradient of the global batch. BatchNorm statistics (so CWTM's batches too) and
DKPP's permutations are per rank: each rank normalises and permutes its own slice, as DDP
training usually does. Running BN statistics are taken from rank 0 before every evaluation.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

from engine import ddp, optim
from engine.context import derive_seed, describe
from engine.tasks import READ_BACK_STEPS, Loop, Task, read_back

def teacher_outputs(teacher, batches, n: int, autocast) -> torch.Tensor:
    """The teacher's logits [n, C] for every training sample, by sample index.

    The cache design: with augmentation off a sample's input is the same every epoch, and the
    teacher is in eval mode, so its logits are a function of the sample index: computed once
    here, they equal recomputing them at every step (up to the float rounding of a different
    batch composition). With augmentation on, a sample's crop differs every epoch, so a cache
    would hold each entry for one use: the loop then recomputes instead (and says so).
    """
    with torch.inference_mode():
        out = None
        for x, idx in batches:
            with autocast():
                z = teacher(x).float()
            if out is None:
                out = torch.empty(n, z.shape[1], device=z.device)
            out[idx] = z
    return out.clone()  # a normal tensor, usable outside inference mode


@torch.inference_mode()
def evaluate(net, batches, autocast, keep_probs: bool = False):
    """(mean cross-entropy, error rate, softmax probabilities [N, C] float32 or None)."""
    net.eval()
    loss = err = 0.0
    probs = []
    for x, y in batches:
        with autocast():
            logits = net(x)
        logits = logits.float()
        loss = loss + F.cross_entropy(logits, y, reduction="sum")
        err = err + (logits.argmax(1) != y).sum()
        if keep_probs:
            probs.append(F.softmax(logits, dim=1).cpu())
    n = len(batches.y)
    loss, err = torch.stack([torch.as_tensor(loss).float(), torch.as_tensor(err).float()]).tolist()
    return loss / n, err / n, (torch.cat(probs).numpy().astype(np.float32) if keep_probs else None)


def ensemble_metrics(test_y: torch.Tensor, member_probs: list) -> dict:
    """Ens*k: the mean of the members' softmax outputs (probabilities, not logits); its error and
    its test loss (the NLL of the mean probabilities)."""
    p = np.mean(np.stack([np.asarray(m, dtype=np.float64) for m in member_probs]), axis=0)
    y = test_y.numpy()
    p_true = np.clip(p[np.arange(len(y)), y], 1e-12, None)
    return {"test_err": float(np.mean(p.argmax(axis=1) != y)), "test_loss": float(-np.mean(np.log(p_true)))}


class ImageClassifier(Task):
    """The task of engine.data.ImageData data sets."""
    metrics = ("train_loss", "train_err", "val_loss", "val_err", "test_loss", "test_err")
    sums = ("loss", "err")

    def model_args(self) -> dict:
        return {"num_classes": self.data.num_classes, "in_channels": self.data.in_channels}

    def place(self, ctx, gen, model):
        return model.to(ctx.device, memory_format=memory_format(gen, ctx.device))

    def start(self, ctx, gen, model, teacher, parts) -> ImageLoop:
        return ImageLoop(ctx, gen, model, teacher, parts, self.data)

    def plateau_metric(self, metrics: dict) -> float:
        return metrics.get("val_loss", metrics["train_loss"])

    def throughput(self, n: int, seconds: float) -> dict:
        return {"samples": n, "samples_per_s": round(n / max(seconds, 1e-9), 1)}

    def ensemble_metrics(self, member_probs: list) -> dict:
        return ensemble_metrics(self.data.test_y, member_probs)


def memory_format(gen, device) -> torch.memory_format:
    return torch.channels_last if optim.channels_last(gen.training, device, gen.model) else torch.preserve_format


class ImageLoop(Loop):
    """One image generation's batches, teacher and steps."""

    def __init__(self, ctx, gen, model, teacher, parts, data):
        t, device = gen.training, ctx.device
        self.ctx, self.gen, self.model, self.parts = ctx, gen, model, parts
        self.seed = ctx.gen_seed(gen)
        # Batches yield sample indices as their "labels": labels and cached teacher logits are
        # looked up by index. Under DDP the last, short global batch is dropped only when it
        # cannot give every rank a sample.
        self.n_train = len(data.train_x)
        self.drop_last = ctx.world_size > 1 and 0 < self.n_train % t.batch_size < ctx.world_size
        self.data = data
        self.batches = self.make_batches(data.train_x, torch.arange(self.n_train), t.batch_size, True)
        self.train_y = data.train_y.to(device)
        self.test = self.make_batches(data.test_x, data.test_y, t.eval_batch_size, False)
        self.val = self.make_batches(data.val_x, data.val_y, t.eval_batch_size, False) if data.val_x is not None else None
        self.steps = len(self.batches)
        self.teacher, self.cache = self.place_teacher(teacher)
        self.net = model
        if ctx.world_size > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        if t.compile:
            self.net = torch.compile(self.net)
            if self.teacher is not None and self.cache is None:
                self.teacher = torch.compile(self.teacher)
        self.eval_net = self.net if ctx.world_size == 1 else model

    def make_batches(self, x, y, batch_size, train):
        from engine.data import batches_for
        ctx, data = self.ctx, self.data
        return batches_for(x, y, batch_size, data, shuffle=train, augment=train and ctx.exp.dataset.augment,
                       seed=self.seed, device=ctx.device, drop_last=train and self.drop_last,
                       channels_last=optim.channels_last(self.gen.training, ctx.device, self.gen.model),
                       rank=ctx.rank if train else 0, world_size=ctx.world_size if train else 1)

    def place_teacher(self, teacher):
        """(the teacher on the device in eval mode, its cached logits or None)."""
        if teacher is None:
            return None, None
        t = self.gen.training
        teacher.eval().to(self.ctx.device, memory_format=memory_format(self.gen, self.ctx.device))
        if t.teacher_cache and self.batches.augment:
            self.ctx.log(f"{describe(self.gen)}: teacher_cache has no effect with augmentation (every epoch crops "
                         "and flips each image anew); computing the teacher's outputs at every step", "warning")
        elif t.teacher_cache:
            every = self.make_batches(self.data.train_x, torch.arange(self.n_train), t.eval_batch_size, False)
            return teacher, teacher_outputs(teacher, every, self.n_train, self.parts.autocast)
        return teacher, None

    def begin_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)
        torch.manual_seed(derive_seed(self.seed, "epoch", epoch, self.ctx.rank))   # dropout

    def train(self, epoch, skip, sums, carry, lr_at):
        from engine.objectives import diagnostic_sums
        ctx, p, t = self.ctx, self.parts, self.gen.training
        window = []   # (step, batch size, diagnostic keys, [loss, errors, *diagnostics]) not yet read back
        self.net.train()
        for step, (x, idx) in enumerate(itertools.islice(self.batches, skip, None), start=skip):
            optim.set_lr(p.optimizer, lr_at(step))
            labels = self.train_y[idx]
            with p.autocast():
                logits = self.net(x)
                if self.cache is not None:
                    t_logits = self.cache[idx]
                elif self.teacher is not None:
                    with torch.inference_mode():
                        t_logits = self.teacher(x)
                else:
                    t_logits = None
            loss = p.objective(logits.float(), t_logits, labels, **p.options)
            # DDP averages the ranks' gradients: weight each rank's mean by its share of the batch
            # so that the average is the gradient of the global batch's mean loss.
            n_global = min(t.batch_size, self.n_train - step * t.batch_size)
            weight = len(labels) * ctx.world_size / n_global if ctx.world_size > 1 else 1.0
            optim.optimizer_step(p.optimizer, p.scaler, loss * weight if weight != 1.0 else loss, self.model, t.grad_clip)
            with torch.no_grad():   # the step's numbers stay on the device until the next read-back
                diag = diagnostic_sums(logits.detach().float(), t_logits, labels, self.gen.objective, **p.options)
                window.append((step, len(labels), list(diag), torch.stack(
                    [loss.detach().float(), (logits.argmax(1) != labels).sum().float(), *diag.values()])))
            # Read back every READ_BACK_STEPS steps (the same steps on every rank), at the epoch's
            # end and, with one process, as soon as SIGTERM asks; ranks stop together at a read-back.
            if len(window) == READ_BACK_STEPS or step + 1 == self.steps or (ctx.world_size == 1 and ctx.stop.is_set()):
                yield step + 1, read_back(window, sums, ("loss", "err"), counted=("err",)), None
                window = []

    def evaluate(self, sums, keep_probs):
        ddp.broadcast_buffers(self.model)
        autocast, n = self.parts.autocast, sums["n"]
        metrics = {"train_loss": sums["loss"] / n, "train_err": sums["err"] / n}
        if self.val is not None:
            metrics["val_loss"], metrics["val_err"], _ = evaluate(self.eval_net, self.val, autocast)
        metrics["test_loss"], metrics["test_err"], probs = evaluate(self.eval_net, self.test, autocast, keep_probs)
        return metrics, probs

    def test_probs(self):
        return evaluate(self.eval_net, self.test, self.parts.autocast, keep_probs=True)[2]

    def fit(self):
        """The training set in eval mode (BN running statistics, no dropout), unaugmented, in order."""
        every = self.make_batches(self.data.train_x, self.data.train_y, self.gen.training.eval_batch_size, False)
        loss, err, _ = evaluate(self.eval_net, every, self.parts.autocast)
        return {"train_eval_loss": loss, "train_eval_err": err}
