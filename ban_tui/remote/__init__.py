"""Remote GPU boxes over SSH, in four parts that import one way (transport ← the others):

- `transport`  the ssh argv and options, the shared connection (ControlMaster), quoting of remote
               words and paths, `run_checked`, `close`, and `RemoteError`.
- `operations` what is done on a host by one command: check the engine's versions, launch a run,
               list and find runs, pull a run back (the host's paths too).
- `source`     `RemoteSource`: follows a run's events.jsonl on a host by byte offset (the remote
               twin of ban_tui.follow.LocalSource; both implement ban_tui.follow.Source).
- `gpus`       the GPUs of a host (nvidia-smi) and the runs running there.

How they are shown (`ban hosts`, the TUI's hosts panel) lives in ban_tui.tables with the other rows.
Never imports torch or textual.
"""
