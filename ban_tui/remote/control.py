"""Cancel, resume and remove a run on a host: one ssh round trip to `python -m ban_tui.host VERB
RUNS_DIR REF`, which runs the verb's one implementation there (ban_tui.host.control), so
"running", "finished" and "queued" mean the same on both ends."""
from __future__ import annotations

from engine.spec import Host
from ban_tui.remote.operations import remote_runs_dir
from ban_tui.remote.transport import host_call


def control(host: Host, verb: str, ref: str, wait: bool = True, timeout: float = 120.0) -> dict:
    """Run a verb on the host; its answer ({message, run_dir[, pid]}), RemoteError when refused."""
    flags = (["--no-wait"] if not wait else []) + ["--timeout", f"{timeout:g}"]
    return host_call(host, [verb, remote_runs_dir(host), ref, *flags], f"{verb} {ref}", timeout=timeout + 60)
