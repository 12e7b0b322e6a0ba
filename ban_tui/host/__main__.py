"""`python -m ban_tui.host VERB ...`: everything ban runs on a host, one entry point.

    versions                               the engine's schema and package version
    find RUNS_DIR REF                      a run directory by reference
    list RUNS_DIR                          every run, folded (and its queue's scheduler ensured)
    load RUNS_DIR                          the slots: {slots, busy, queued}
    submit            < request.json       queue one chain (ban_tui.remote.queue sends it)
    cancel|resume|rm RUNS_DIR REF [--no-wait] [--timeout S]
    slurm-submit      < payload.json       a Slurm job array of chains (the login node)
    slurm-jobs RUNS_DIR                    each run's Slurm job as squeue sees it

One tagged line of JSON on stdout (ban_tui.host.wire); an error is one line on stderr, exit 1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ban_tui.errors import BackendError
from ban_tui.host.wire import here, say


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ban_tui.host")
    verbs = p.add_subparsers(dest="verb", required=True)
    verbs.add_parser("versions")
    for name in ("list", "load", "slurm-jobs"):
        verbs.add_parser(name).add_argument("runs_dir")
    verbs.add_parser("submit")
    verbs.add_parser("slurm-submit")
    for name in ("find", "cancel", "resume", "rm"):
        v = verbs.add_parser(name)
        v.add_argument("runs_dir")
        v.add_argument("ref")
        v.add_argument("--no-wait", action="store_true")
        v.add_argument("--timeout", type=float, default=120.0)
    return p


def run(args):
    from ban_tui.host import runs
    if getattr(args, "runs_dir", None):   # a host path as its shell would say it: ~ is the home
        args.runs_dir = os.path.expanduser(args.runs_dir)
    if args.verb == "versions":
        return runs.engine_versions()
    if args.verb == "list":
        return runs.list_here(args.runs_dir)
    if args.verb == "load":
        return runs.load_here(args.runs_dir)
    if args.verb == "submit":
        return runs.submit_here(json.load(sys.stdin))
    if args.verb == "find":
        return runs.find_here(args.runs_dir, args.ref)
    if args.verb in ("slurm-submit", "slurm-jobs"):
        from ban_tui.host import slurm_login
        return (slurm_login.submit_here(json.load(sys.stdin)) if args.verb == "slurm-submit"
                else slurm_login.jobs_here(args.runs_dir))
    from engine.runs import find_run
    from ban_tui.host import control
    ref = str(here(args.ref)) if args.ref.startswith("~") else args.ref   # a run dir as a host path
    root = find_run(here(args.runs_dir), ref)
    if args.verb == "cancel":
        return {"message": control.cancel_here(root, not args.no_wait, args.timeout), "run_dir": str(root)}
    if args.verb == "rm":
        return {"message": control.rm_here(root), "run_dir": str(root)}
    r = control.resume_here(root)
    return {"message": f"resumed {r.name} (pid {r.pid})", "run_dir": str(r.run_dir), "pid": r.pid,
            "experiment": r.experiment, "run_id": r.run_id}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        answer = run(args)
    except (BackendError, LookupError, RuntimeError, OSError, ValueError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except Exception as exc:   # noqa: BLE001 - submitit's own failures (sbatch errors): one line
        print(f"error: {type(exc).__name__}: {' '.join(str(exc).split())[:400]}", file=sys.stderr)
        return 1
    say(answer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
