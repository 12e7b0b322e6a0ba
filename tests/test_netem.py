"""`ban follow --host` over a real, faulty network path (issue 14).

Two network namespaces joined by a veth pair (10.200.N.1 <-> 10.200.N.2, addresses that exist
only inside them): sshd in one, `ban follow` in the other, the engine writing a real digits run
meanwhile. The path gets 30 % packet loss and 500 ms delay, then a 15 s partition (the link
down), then recovers. `ban follow` must print every event of the run once, in order (0 lost, 0
repeated) and the run must not notice anything.

Loss and delay come from `tc netem` where the kernel has it. Where it has not (CONFIG_NET_SCH_NETEM
unset, as on some VM kernels) the loss is an nftables rule dropping 30 % of the packets on both
ends of the veth, and the delay a relay in the server's namespace that holds every chunk for
500 ms: the same faults, made one level up. The test skips, with the error, only where the
namespaces cannot be made (no root, no `ip netns`), or where sshd is missing.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from engine.events import read_events
from ban_tui.tables import event_line

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
ENV.pop("BAN_DEBUG", None)
LOSS, DELAY, PARTITION = 30, 0.5, 15.0

RELAY = r"""
import os, socket, sys, threading, time
listen, port, target, delay_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

def delay():
    try:
        return float(open(delay_file).read())
    except (OSError, ValueError):
        return 0.0

def pump(src, dst):
    # each chunk leaves `delay` seconds after it came, in order
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            due = time.monotonic() + delay()
            time.sleep(max(0.0, due - time.monotonic()))
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

server = socket.create_server((listen, port))
while True:
    client, _ = server.accept()
    upstream = socket.create_connection(("127.0.0.1", target))
    for a, b in ((client, upstream), (upstream, client)):
        threading.Thread(target=pump, args=(a, b), daemon=True).start()
"""

# A chain that does not end by itself while the test runs, on any CPU (10,000 epochs, the most the
# spec allows: minutes at the very least, against the test's half minute): the test cancels it.
CONFIG = """
[[experiment]]
name = "tiny"
dataset = {{ name = "digits", augment = false }}
model = "cnn-small"
generations = 0
epochs = 10000
batch_size = 128
device = "cpu"

[hosts.box]
ssh = "box"
workdir = "{work}"
python = "{python}"
runs_dir = "runs"
"""


def sh(*argv, check=True):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
    return proc


class Net:
    """Two namespaces and a veth pair between them; `close()` removes all of it."""

    def __init__(self):
        n = os.getpid() % 200 + 20
        self.srv, self.cli = f"ban-srv-{os.getpid()}", f"ban-cli-{os.getpid()}"
        self.vsrv, self.vcli = f"bvs{os.getpid() % 100000}", f"bvc{os.getpid() % 100000}"
        self.srv_ip, self.cli_ip = f"10.200.{n}.1", f"10.200.{n}.2"
        self.made = []
        self.netem = None

    def make(self) -> None:
        for ns in (self.srv, self.cli):
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
        sh("ip", "link", "add", self.vsrv, "type", "veth", "peer", "name", self.vcli)
        for ns, dev, ip in ((self.srv, self.vsrv, self.srv_ip), (self.cli, self.vcli, self.cli_ip)):
            sh("ip", "link", "set", dev, "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def ends(self):
        return ((self.srv, self.vsrv), (self.cli, self.vcli))

    def impair(self) -> str:
        """30 % loss and 500 ms delay on the path; says how."""
        first = sh("ip", "netns", "exec", self.cli, "tc", "qdisc", "add", "dev", self.vcli, "root", "netem",
                   "loss", f"{LOSS}%", "delay", f"{int(DELAY * 1000)}ms", check=False)
        if first.returncode == 0:
            sh("ip", "netns", "exec", self.srv, "tc", "qdisc", "add", "dev", self.vsrv, "root", "netem",
               "loss", f"{LOSS}%", "delay", f"{int(DELAY * 1000)}ms")
            self.netem = True
            return "tc netem"
        self.netem = False
        for ns, dev in self.ends():
            rules = (f'table inet banfault {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n'
                     f'  oifname "{dev}" numgen random mod 100 < {LOSS} drop\n }}\n}}\n')
            done = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True,
                                  capture_output=True, timeout=30)
            assert done.returncode == 0, f"nft: {done.stderr}"
        return f"nftables drop + relay delay (tc netem: {first.stderr.strip()})"

    def heal(self) -> None:
        for ns, dev in self.ends():
            if self.netem:
                sh("ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root", check=False)
            elif self.netem is False:
                sh("ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "banfault", check=False)

    def link(self, up: bool) -> None:
        sh("ip", "-n", self.cli, "link", "set", self.vcli, "up" if up else "down")

    def close(self) -> None:
        for ns in self.made:
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def net():
    if not os.access(SSHD, os.X_OK) or not shutil.which("ssh"):
        pytest.skip(f"no OpenSSH at {SSHD} (scripts/ci_sshd.sh installs it)")
    n = Net()
    try:
        n.make()
    except (RuntimeError, OSError) as exc:
        n.close()
        pytest.skip(f"cannot make network namespaces: {exc}")
    try:
        yield n
    finally:
        n.close()


def keys_and_configs(root: Path, net: Net, relay_port: int, sshd_port: int) -> Path:
    for name in ("hostkey", "userkey"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
    (root / "authorized_keys").write_text((root / "userkey.pub").read_text())
    host_key = " ".join((root / "hostkey.pub").read_text().split()[:2])
    (root / "known_hosts").write_text(f"[{net.srv_ip}]:{relay_port} {host_key}\n")
    (root / "sshd_config").write_text("\n".join([
        "ListenAddress 127.0.0.1", f"Port {sshd_port}", f"HostKey {root / 'hostkey'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}", f"PidFile {root / 'sshd.pid'}", "UsePAM no",
        "StrictModes no", "PermitRootLogin yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "MaxStartups 100", "MaxSessions 100", ""]))
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    (root / "ssh_config").write_text("\n".join([
        f"Host box\n  HostName {net.srv_ip}\n  Port {relay_port}", "Host *", f"  User {user}",
        f"  IdentityFile {root / 'userkey'}", "  IdentitiesOnly yes", f"  UserKnownHostsFile {root / 'known_hosts'}",
        "  GlobalKnownHostsFile /dev/null", "  StrictHostKeyChecking yes", "  ConnectTimeout 5", "  LogLevel ERROR", ""]))
    return root / "ssh_config"


def in_ns(ns, argv, **kw) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)


def test_follow_over_a_lossy_slow_then_partitioned_network(net, tmp_path):
    control = tempfile.mkdtemp(prefix="bn", dir="/tmp")   # short: ssh's ControlPath lives here
    work = tmp_path / "work"
    work.mkdir()
    ssh_config = keys_and_configs(tmp_path, net, relay_port=2222, sshd_port=2200)
    env = {**ENV, "BAN_SSH_CONFIG": str(ssh_config), "XDG_RUNTIME_DIR": control}
    cfg = tmp_path / "experiments.toml"
    cfg.write_text(CONFIG.format(work=work, python=sys.executable))
    os.makedirs("/run/sshd", exist_ok=True)
    delay_file = tmp_path / "delay"
    logs = open(tmp_path / "servers.log", "wb")
    sshd = in_ns(net.srv, [SSHD, "-D", "-e", "-f", str(tmp_path / "sshd_config")], stdout=logs, stderr=logs)
    relay = in_ns(net.srv, [sys.executable, "-c", RELAY, net.srv_ip, "2222", "2200", str(delay_file)],
                  stdout=logs, stderr=logs)
    engine = follow = None
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["ip", "netns", "exec", net.cli, "ssh", "-F", str(ssh_config), "-o", "BatchMode=yes",
                              "box", "true"], capture_output=True, timeout=30).returncode != 0:
            assert time.monotonic() < deadline, (tmp_path / "servers.log").read_text()[-500:]
            time.sleep(0.2)
        run_dir = work / "runs" / "tiny" / "netem"
        run_dir.mkdir(parents=True)
        engine = subprocess.Popen([sys.executable, "-m", "engine", "run", str(cfg), "--experiment", "tiny",
                                   "--runs-dir", str(work / "runs"), "--run-id", "netem"], env=ENV,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait(lambda: any(e["kind"] == "epoch" for e in read_events(run_dir / "events.jsonl")), "the first epoch")
        follow = in_ns(net.cli, [sys.executable, "-m", "ban_tui.cli", "follow", "tiny/netem", "--host", "box",
                                 "--config", str(cfg)], env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = []   # (arrival time, line) of ban follow's output
        reader = threading.Thread(target=lambda: [lines.append((time.time(), ln.rstrip("\n"))) for ln in follow.stdout])
        reader.start()
        wait(lambda: any("epoch" in ln for _, ln in lines), "ban follow's first epoch line")

        how = net.impair()
        delay_file.write_text("" if net.netem else str(DELAY))
        time.sleep(10)
        net.link(False)                              # the partition
        down = time.time()
        time.sleep(PARTITION)
        net.link(True)                               # recovery
        up = time.time()
        net.heal()
        delay_file.write_text("0")
        written_while_down = [e for e in read_events(run_dir / "events.jsonl") if down < e["ts"] < up]
        assert written_while_down, "the run wrote nothing during the partition"
        wait(lambda: any(t > up and "epoch" in ln for t, ln in lines), "ban follow to catch up", 120)
        time.sleep(2)
        engine.send_signal(signal.SIGTERM)           # the end of the run, as a user's `ban cancel`
        assert engine.wait(timeout=120) == 0, engine.stderr.read().decode()
        assert follow.wait(timeout=120) == 130, follow.stderr.read()   # the run ended cancelled
        reader.join(30)
    finally:
        for p in (follow, engine, relay, sshd):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        for p in psutil.process_iter(["name", "cmdline"]):   # our ssh ControlMasters (they persist)
            if p.info["name"] == "ssh" and control in " ".join(p.info["cmdline"] or ()):
                p.kill()
        shutil.rmtree(control, ignore_errors=True)
    events = read_events(run_dir / "events.jsonl")
    name = "tiny/netem"
    expected = [line for e in events if (line := event_line(name, e))]
    title = f"{name} (cancelled)"
    printed = [ln for _, ln in lines]
    printed = printed[:printed.index(title)] if title in printed else printed
    noise = (f"{name}: lost the connection", f"{name}: reconnected")
    shown = [ln for ln in printed if not ln.startswith(noise)]
    print(f"faults: {how}; {len(expected)} event lines, {len(written_while_down)} events during the partition, "
          f"{sum(ln.startswith(noise[0]) for ln in printed)} connection losses reported")
    assert shown == expected                         # 0 lost, 0 repeated, in order
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    epochs = [e["epoch"] for e in events if e["kind"] == "epoch"]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= 2   # the run never noticed
    assert not [e for e in events if e["kind"] == "error"] and events[-1]["status"] == "cancelled"
    lines_down = {event_line(name, e) for e in written_while_down} - {None}
    assert lines_down and any(t > up for t, ln in lines if ln in lines_down)   # they came after the partition


def wait(predicate, what, timeout=180.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
