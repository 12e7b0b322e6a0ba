"""A small born-again chain on the real Penn Treebank: teacher (ce) -> BAN-1 (ban+l), CPU-sized.

    .venv/bin/python bench/ptb_chain.py [--model lstm-2x128] [--epochs 3] [--train-tokens 200000]
                                         [--runs-dir /tmp/ptb-bench] [--threads N]

Writes a one-experiment config (the `ptb-small-cpu` preset of experiments.toml with the options
above), runs it through `python -m engine run` as `ban run` would, follows its events, and prints
validation and test perplexity per generation and epoch, then for Ens (teacher + BAN-1, the mean
of the two next-word distributions). Data: ../shared/data/ptb (Mikolov's split, 10,000 words).
The whole vocabulary and the full validation and test sets are always used; --train-tokens
only shortens the training stream so that a CPU finishes in minutes.
"""
import argparse
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from engine import runs, spec
from engine.events import EventReader

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "ptb"
PRESET = "ptb-small-cpu"


def bench_experiment(args):
    """The shipped preset (experiments.toml) with this command's model, epochs, training tokens
    and data root, on the CPU."""
    exp = spec.load(ROOT / "experiments.toml").experiments[PRESET]
    exp.dataset = replace(exp.dataset, root=args.data,
                          options={**exp.dataset.options, "train_tokens": args.train_tokens})
    exp.generations = [replace(g, model=args.model, training=replace(g.training, epochs=args.epochs))
                       for g in exp.generations]
    exp.device = "cpu"
    return exp


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="lstm-2x128")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-tokens", type=int, default=200_000)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--runs-dir", default="/tmp/ptb-bench")
    ap.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the engine (default: torch's choice)")
    args = ap.parse_args()

    runs_dir = Path(args.runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    config = runs_dir / f"{PRESET}.toml"
    config.write_text(spec.dumps_experiment(bench_experiment(args)))
    run_id = runs.new_run_id(0)
    root = runs.run_dir(runs_dir, PRESET, run_id)
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
    print(f"config {config}\nrun    {root}", flush=True)
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "engine", "run", str(config), "--experiment", PRESET,
                             "--runs-dir", str(runs_dir), "--run-id", run_id], env=env)
    reader = EventReader(root / "events.jsonl")
    state = runs.RunState()
    print(f"{'gen':>7} {'epoch':>5} {'lr':>7} {'train_ppl':>9} {'val_ppl':>8} {'test_ppl':>8} {'tok/s':>7} {'s':>6}")
    while True:
        done = proc.poll() is not None
        for e in reader.poll():
            state.apply(e)
            if e["kind"] == "epoch":
                print(f"{runs.gen_label(e['gen']):>7} {e['epoch']:>5} {e['lr']:>7.4f} {e['train_ppl']:>9.2f} "
                      f"{e['val_ppl']:>8.2f} {e['test_ppl']:>8.2f} {e['tokens_per_s']:>7.0f} {e['seconds']:>6.1f}",
                      flush=True)
        if done:
            break
        time.sleep(1.0)
    if proc.returncode != 0 or state.end is None or state.end.get("status") != "ok":
        sys.exit(f"the run failed (exit {proc.returncode}): see {root}/stderr or the events")

    print(f"\nPTB, {args.model}, {args.epochs} epochs a generation, {args.train_tokens} training tokens "
          f"({time.time() - t0:.0f} s in all)")
    print(f"{'':>17} {'params':>10} {'val_ppl':>8} {'test_ppl':>8}")
    for g in state.gens.values():
        print(f"{g.label:>17} {g.params:>10,} {g.final['val_ppl']:>8.2f} {g.final['test_ppl']:>8.2f}")
    for k, e in state.ensembles.items():
        label = "Ens " + "+".join(runs.gen_label(m) for m in e["members"])
        val = ensemble_val_ppl(root, e["members"])
        print(f"{label:>17} {'':>10} {val:>8.2f} {e['test_ppl']:>8.2f}")


def ensemble_val_ppl(root, members):
    """The chain stores test probabilities only: run the members' final weights on the
    validation stream for the ensemble's validation perplexity."""
    from engine import checkpoint, models
    from engine.data import ptb
    from engine.tasks.lm import ensemble_metrics, evaluate
    exp = next(iter(spec.load(root / "experiment.toml").experiments.values()))
    corpus = ptb.load(exp.dataset)
    val = ptb.batchify(corpus.val, exp.generations[0].training.eval_batch_size)
    probs = []
    for m in members:
        saved = checkpoint.load(runs.RunPaths(root).gen_checkpoint(m))
        model = models.build(saved["model"], corpus.num_classes, vocab=corpus.vocab, **saved["model_options"])
        model.load_state_dict(saved["state_dict"])
        probs.append(evaluate(model, val, corpus.bptt, keep_probs=True)[1])
    return ensemble_metrics(probs)["test_ppl"]   # (the formula does not care which split)


if __name__ == "__main__":
    main()
