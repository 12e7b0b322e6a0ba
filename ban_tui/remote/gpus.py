"""The GPUs of a host: nvidia-smi over ssh, and the runs running there (`ban hosts`, the TUI's
hosts panel; their rows are ban_tui.tables.host_rows)."""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.spec import Host
from ban_tui.remote.operations import RemoteRun, list_remote_runs
from ban_tui.remote.transport import NO_CONNECTION, RemoteError, error_line, ssh

GPU_QUERY = ("nvidia-smi --query-gpu=index,name,utilization.gpu,memory.used,memory.total "
             "--format=csv,noheader,nounits")
NO_GPU = "no-nvidia-smi"
LIVE = ("running", "starting", "queued")   # the runs a host's row lists (and the hosts tab follows)


@dataclass
class GpuRow:
    index: int
    name: str
    util: float | None        # percent
    mem_used: float | None    # MiB
    mem_total: float | None   # MiB


@dataclass
class HostStatus:
    name: str
    reachable: bool
    error: str = ""
    gpus: list[GpuRow] | None = None      # None: no NVIDIA GPU
    runs: list[RemoteRun] = field(default_factory=list)   # runs there that run, start or wait for a slot

    @property
    def summary(self) -> str:
        if not self.reachable:
            return f"unreachable: {self.error}"
        if self.error:
            return f"error: {self.error}"
        if self.gpus is None:
            return "no NVIDIA GPU"
        return f"{len(self.gpus)} GPU" + ("s" if len(self.gpus) != 1 else "")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:      # "[N/A]", "[Not Supported]"
        return None


def parse_gpus(text: str) -> list[GpuRow]:
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 5 or not cells[0].isdigit():
            continue
        rows.append(GpuRow(int(cells[0]), cells[1], *(_number(c) for c in cells[2:])))
    return rows


def gpu_status(host: Host, timeout: float = 20.0, with_runs: bool = True) -> HostStatus:
    """GPU rows from nvidia-smi; a host without it has gpus=None ("no NVIDIA GPU"), an unreachable
    one reachable=False with ssh's error line. `runs` holds the host's live runs (LIVE)."""
    proc = ssh(host, f"command -v nvidia-smi >/dev/null 2>&1 || {{ echo {NO_GPU}; exit 0; }}; {GPU_QUERY}",
               timeout=timeout)
    if proc.returncode == NO_CONNECTION:
        return HostStatus(host.name, False, error_line(proc))
    if proc.returncode != 0:
        return HostStatus(host.name, True, f"nvidia-smi failed: {error_line(proc)}")
    out = proc.stdout.decode(errors="replace")
    status = HostStatus(host.name, True, gpus=None if out.strip() == NO_GPU else parse_gpus(out))
    if with_runs:
        try:
            status.runs = [r for r in list_remote_runs(host, timeout) if r.status in LIVE]
        except (RemoteError, ValueError):
            pass   # no engine there (yet): the GPUs are still worth showing
    return status
