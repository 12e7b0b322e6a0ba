"""What runs on a host, versioned with the package: `python -m ban_tui.host VERB ...` is the one
entry point (ban_tui.host.__main__), for this machine's runs as for a box's over ssh.

- `runs`        the engine's versions, find / list runs, the load of the slots, queue a chain.
- `control`     cancel, resume, rm of a run, on the machine that holds its directory.
- `slurm_login` the login node of a Slurm cluster: submit a job array (submitit), the jobs in squeue.
- `slurm_job`   inside a Slurm job: the engine on one run directory, requeued before its time limit.
- `wire`        the answer's one tagged line of JSON, and host paths as this side sees them.

Nothing here imports the laptop side (ban_tui.remote, ban_tui.backends, ban_tui.slurm) nor textual;
only `slurm_job` imports torch, inside the job.
"""
