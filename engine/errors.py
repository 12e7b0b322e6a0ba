"""The engine's errors, by the exit status they give (engine/__main__.py). Torch-free."""
from __future__ import annotations


class ConfigError(Exception):
    """The experiment cannot run as written (model, data, checkpoint shapes): exit status 2."""


class RunError(Exception):
    """Training went wrong (a non-finite loss): exit status 1."""


class Cancelled(Exception):
    """SIGTERM/SIGINT: the step finished and last.pt holds everything needed to resume."""
