"""How a host answers: one line `ban-host: {json}` on stdout (anything else a program prints around it
is ignored), an error as one line on stderr and exit status 1; and host paths as the host sees
them. Imported on both ends, so both read the same line."""
from __future__ import annotations

import json
import os
from pathlib import Path

OUTPUT_TAG = "ban-host: "      # the line of a host command's output that holds its JSON answer


def here(path: str) -> Path:
    """A host path as this (host) side sees it: `~` expanded, absolute (relative: to the home)."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def say(answer) -> None:
    print(OUTPUT_TAG + json.dumps(answer), flush=True)


def answer_of(out: str):
    """The JSON answer in a host command's output; ValueError when there is none."""
    for line in reversed(out.splitlines()):
        if line.startswith(OUTPUT_TAG):
            return json.loads(line[len(OUTPUT_TAG):])
    raise ValueError(f"expected a line starting {OUTPUT_TAG!r}, found {out[-200:]!r}")
