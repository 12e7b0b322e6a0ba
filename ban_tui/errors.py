"""The one base of what a backend call raises when it cannot do what was asked (ban_tui.backends):
a run that cannot be launched (ban_tui.launch.LaunchError), a remote step that failed
(ban_tui.remote.transport.RemoteError), a verb refused on the machine holding the run
(ControlError). The message is one line. Imports nothing."""


class BackendError(Exception):
    """A backend call could not be done; the message says why, in one line."""
