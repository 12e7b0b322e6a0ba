"""Suite-wide settings.

One intra-op thread for torch, in this process and in every engine subprocess a test starts
(they inherit the environment): the suite's models are tiny, and on a 2-core machine shared with
engine subprocesses OpenMP threads spin waiting for each other (a 0.4 s step took over a minute).
Set here, before any test module imports torch, since torch reads it at import.
"""
import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

from sshd import sshd_server  # noqa: E402,F401  (the session's server behind the `sshd` fixture)
