"""The ssh transport of ban_tui.remote: the system OpenSSH client in subprocesses (argv lists,
never a local shell), so ~/.ssh/config, agents, jump hosts and host-key checking work as the user
set them up. Connections are shared through a ControlMaster, so a poll costs one round trip, not a
handshake. `BAN_SSH_CONFIG=FILE` passes `-F FILE` (another ssh config, e.g. a test server's).

Every remote command line is built from quoted words (`words`, `rpath`), so host paths and names
holding spaces, quotes, `;`, `$()` or newlines are data, never code.

Remote paths are strings as the remote shell sees them: absolute, relative to the remote home,
or starting with `~/` (the remote home; `rpath` keeps that meaning when quoting).
"""
from __future__ import annotations

import os
import shlex
import subprocess

from engine.spec import Host
from ban_tui.errors import BackendError
from ban_tui.host.wire import answer_of

NO_CONNECTION = 255       # ssh's own exit status: the connection failed, not the remote command


class RemoteError(BackendError):
    """A remote step failed; the message is one line naming the host and what went wrong."""


def control_path() -> str:
    """Where the shared connection's socket lives. A unix socket path holds ~104 bytes and %C
    is a 40-character hash, so a long or odd $XDG_RUNTIME_DIR falls back to /tmp."""
    base = os.environ.get("XDG_RUNTIME_DIR", "")
    if not base or len(base) > 50 or any(c.isspace() for c in base):
        return f"/tmp/ban-{os.getuid()}-%C"
    return os.path.join(base, "ban-%C")


def ssh_options() -> list[str]:
    """The options of every ssh/scp/rsync call. Host keys are checked as the user's config says."""
    opts = ["-o", "BatchMode=yes", "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
            "-o", "ControlMaster=auto", "-o", f"ControlPath={control_path()}", "-o", "ControlPersist=60"]
    if os.environ.get("BAN_SSH_CONFIG"):
        opts += ["-F", os.environ["BAN_SSH_CONFIG"]]
    return opts


def destination(host: Host) -> str:
    # The config validator rejects these too; a destination starting with "-" would be an option.
    if not host.ssh or host.ssh.startswith("-") or any(c.isspace() for c in host.ssh):
        raise RemoteError(f"host {host.name!r}: expected an ssh destination like user@host or an "
                          f"alias, found {host.ssh!r}")
    return host.ssh


def ssh_argv(host: Host, command: str | None = None, options: list[str] = ()) -> list[str]:
    return ["ssh", *ssh_options(), *options, "--", destination(host)] + ([command] if command else [])


def rpath(path: str) -> str:
    """A remote path as one shell word; a leading `~/` still means the remote home."""
    path = str(path)
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def words(*args) -> str:
    return " ".join(shlex.quote(str(a)) for a in args)


def ssh(host: Host, command: str, input: bytes | None = None, timeout: float = 30.0):
    """Run one remote shell command line; a timeout reads as a dropped connection."""
    try:
        return subprocess.run(ssh_argv(host, command), input=input, capture_output=True,
                              stdin=None if input is not None else subprocess.DEVNULL, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(exc.cmd, NO_CONNECTION, exc.output or b"",
                                           f"ssh: no answer within {timeout:g} s".encode())


def error_line(proc) -> str:
    lines = [ln.strip() for ln in (proc.stderr or b"").decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit status {proc.returncode}"


def run_checked(host: Host, command: str, what: str, input: bytes | None = None,
                timeout: float = 30.0) -> str:
    proc = ssh(host, command, input=input, timeout=timeout)
    if proc.returncode == NO_CONNECTION:
        raise RemoteError(f"host {host.name!r} ({host.ssh}): cannot connect: {error_line(proc)}")
    if proc.returncode != 0:
        raise RemoteError(f"host {host.name!r}: {what} failed: {error_line(proc)}")
    return proc.stdout.decode(errors="replace")


def close(host: Host) -> None:
    """Stop the shared connection to a host (if one is up)."""
    subprocess.run(ssh_argv(host, options=["-O", "exit"]), capture_output=True,
                   stdin=subprocess.DEVNULL, timeout=10)


def host_call(host: Host, args: list[str], what: str, input: bytes | None = None, timeout: float = 60.0,
              before: str = ""):
    """Run `python -m ban_tui.host ARGS` on the host (ban_tui.host.__main__) and return its JSON
    answer; `before`: a shell command line to run first (`mkdir -p DIR &&`)."""
    command = f"{before}{rpath(host.python)} -m ban_tui.host {words(*args)}"
    out = run_checked(host, command, what, input=input, timeout=timeout)
    try:
        return answer_of(out)
    except ValueError as exc:
        raise RemoteError(f"host {host.name!r}: {what}: {exc}") from None

