"""A real OpenSSH server on 127.0.0.1 for the remote tests (import the `sshd` fixture).

The server runs as the current user with its own host key, authorized key, sshd_config and pid
file in a temp dir; the client side is an ssh config passed through BAN_SSH_CONFIG, whose
known_hosts holds the generated host key, so host-key checking stays on. Two ports: `loop` is a
plain box without GPUs; on `loopgpu` the server puts a fake `nvidia-smi` first on PATH.
The "remote" python is this interpreter, its workdir a temp dir of each test's own. CI installs the server with
scripts/ci_sshd.sh; where it is missing the tests skip, saying why.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from engine.spec import Host

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"

FAKE_NVIDIA_SMI = """#!/bin/sh
# A stand-in for nvidia-smi on a box with two GPUs (the second one busy, utilisation unknown).
echo "0, NVIDIA H100 80GB HBM3, 37, 1024, 81559"
echo "1, NVIDIA H100 80GB HBM3, [N/A], 80000, 81559"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd:
    def __init__(self, root: Path):
        self.root = root
        self.ports = {"loop": _free_port(), "loopgpu": _free_port()}
        self.workdir = root / "work"
        self.fakebin = root / "fakebin"
        self.proc: subprocess.Popen | None = None

    def setup(self) -> None:
        r = self.root
        for name in ("hostkey", "userkey"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(r / name)], check=True)
        (r / "authorized_keys").write_text((r / "userkey.pub").read_text())
        self.workdir.mkdir()
        self.fakebin.mkdir()
        (self.fakebin / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
        (self.fakebin / "nvidia-smi").chmod(0o755)
        host_key = " ".join((r / "hostkey.pub").read_text().split()[:2])
        (r / "known_hosts").write_text(
            ",".join(f"[127.0.0.1]:{p}" for p in self.ports.values()) + f" {host_key}\n")
        user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
        (r / "sshd_config").write_text("\n".join([
            "ListenAddress 127.0.0.1", *(f"Port {p}" for p in self.ports.values()),
            f"HostKey {r / 'hostkey'}", f"AuthorizedKeysFile {r / 'authorized_keys'}",
            f"PidFile {r / 'sshd.pid'}", "UsePAM no", "StrictModes no", "PermitRootLogin yes",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "MaxStartups 100",
            "MaxSessions 100", "Subsystem sftp /usr/lib/openssh/sftp-server",
            # one thread per engine on "the host" too (tests/conftest.py): it shares these 2 cores
            "SetEnv OMP_NUM_THREADS=1", f"Match LocalPort {self.ports['loopgpu']}",
            f"  SetEnv PATH={self.fakebin}:/usr/local/bin:/usr/bin:/bin OMP_NUM_THREADS=1", ""]))
        (r / "ssh_config").write_text("\n".join(
            [f"Host {name}\n  HostName 127.0.0.1\n  Port {port}" for name, port in self.ports.items()]
            + ["Host *", f"  User {user}", f"  IdentityFile {r / 'userkey'}", "  IdentitiesOnly yes",
               f"  UserKnownHostsFile {r / 'known_hosts'}", "  GlobalKnownHostsFile /dev/null",
               "  StrictHostKeyChecking yes", "  ConnectTimeout 5", "  LogLevel ERROR", ""]))
        check = subprocess.run([SSHD, "-t", "-f", str(r / "sshd_config")], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"sshd -t: {check.stderr.strip()}")

    def start(self) -> None:
        log = open(self.root / "sshd.log", "ab")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.root / 'sshd.log').read_text()[-300:]}")
            try:
                for port in self.ports.values():
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not listen within 10 s")

    def stop(self) -> None:
        """Stop the listener (sessions already open go on, as after an sshd restart)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def host(self, name: str = "loop", **over) -> Host:
        values = dict(ssh=name, workdir=str(self.workdir), python=sys.executable, runs_dir="runs")
        return Host(name=name, **{**values, **over})

    def ssh_children(self) -> list[int]:
        """Our ssh client processes (one in flight, or a ControlMaster we spawned)."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
                cmdline = (stat.parent / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            comm = text[text.index("(") + 1:text.rindex(")")]
            # A ControlMaster renames itself "ssh: <ControlPath> [mux]": both name our temp dir.
            if comm == "ssh" and str(self.root) in cmdline:
                pids.append(int(stat.parent.name))
        return pids

    def kill_clients(self) -> int:
        """Drop every connection this test process has open: in-flight clients and masters."""
        killed = 0
        for pid in self.ssh_children():
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        return killed

    def sabotage(self, drops: int, every: float, down: float, kills: list) -> None:
        """Drop every connection `drops` times, `every` s apart (appending how many each time to
        `kills`), then stop the server for `down` s; it is started again whatever happens, since
        the later tests share it."""
        try:
            for _ in range(drops):
                time.sleep(every)
                kills.append(self.kill_clients())
            self.stop()
            self.kill_clients()
            time.sleep(down)
        finally:
            self.start()


@pytest.fixture
def sshd(sshd_server):
    """The session's server with a workdir of this test's own: a test never sees another's runs
    (`ban ls --host`, a host's status and queue list only what this test made)."""
    sshd_server.workdir = Path(tempfile.mkdtemp(prefix="w", dir=sshd_server.root))
    return sshd_server


@pytest.fixture(scope="session")
def sshd_server():
    """One OpenSSH server for the session (each xdist worker has its own)."""
    for tool in ("ssh", "ssh-keygen"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (scripts/ci_sshd.sh installs openssh)")
    if not os.access(SSHD, os.X_OK):
        pytest.skip(f"no OpenSSH server at {SSHD} (scripts/ci_sshd.sh installs openssh-server)")
    try:
        os.makedirs("/run/sshd", exist_ok=True)   # sshd's privilege-separation directory
    except OSError as exc:
        pytest.skip(f"cannot create /run/sshd for sshd: {exc.strerror}")
    root = Path(tempfile.mkdtemp(prefix="bs", dir="/tmp"))   # short: ControlPath lives here
    server = Sshd(root)
    saved = {k: os.environ.get(k) for k in ("BAN_SSH_CONFIG", "XDG_RUNTIME_DIR")}
    os.environ["BAN_SSH_CONFIG"] = str(root / "ssh_config")
    os.environ["XDG_RUNTIME_DIR"] = str(root)
    try:
        server.setup()
        server.start()
        probe = subprocess.run(["ssh", "-F", str(root / "ssh_config"), "-o", "BatchMode=yes", "loop", "true"],
                               capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=20)
        if probe.returncode != 0:
            pytest.skip(f"cannot log in to the test sshd: {probe.stderr.strip()[-200:]}")
        yield server
    finally:
        server.kill_clients()
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(root, ignore_errors=True)
