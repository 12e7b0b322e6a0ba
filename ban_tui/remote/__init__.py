"""Remote GPU boxes over SSH, the laptop's side (what runs on the host is ban_tui.host), in parts
that import one way (transport ← the others):

- `transport`  the ssh argv and options, the shared connection (ControlMaster), quoting of remote
               words and paths, `run_checked`, `host_call` (`python -m ban_tui.host VERB` there),
               `close`, and `RemoteError`.
- `operations` what is done on a host by one command: check the engine's versions, launch a run,
               list and find runs, pull a run back (the host's paths too).
- `queue`      submit a chain to the host's own queue, its load, `QueuedRemoteSource`.
- `control`    cancel, resume, rm of a run there.
- `source`     `RemoteSource`: follows a run's events.jsonl on a host by byte offset (the remote
               twin of ban_tui.follow.LocalSource; both implement ban_tui.follow.Source).
- `gpus`       the GPUs of a host (nvidia-smi) and the runs live there.

ban_tui.backends.ssh puts them behind the Backend protocol. How they are shown (`ban hosts`, the
TUI's hosts panel) lives in ban_tui.tables with the other rows. Never imports torch or textual.
"""
