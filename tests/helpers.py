"""Helpers shared by the tests."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str) -> bool:
    """Whether a GET of `url` gets a 200 now (a server that is not up yet, or refuses, is False)."""
    import httpx

    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def processes_mentioning(marker: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose command line or open files mention `marker`.

    Ray's daemons carry their session folder on the command line; its workers
    rename themselves (``ray::IDLE``) but keep their log files in that folder
    open. So a Ray started with a unique temp folder is found exactly, without
    name patterns.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
            status = (entry / "status").read_text()
        except OSError:
            continue
        if "State:\tZ" in status:  # a zombie holds no resources and is its parent's to reap
            continue
        command = raw.replace(b"\0", b" ").decode(errors="replace")
        if marker in command or _has_open_file_under(entry, marker):
            found.append((int(entry.name), command[:200]))
    return found


def _has_open_file_under(process: Path, marker: str) -> bool:
    try:
        descriptors = list((process / "fd").iterdir())
    except OSError:
        return False
    for descriptor in descriptors:
        try:
            if marker in os.readlink(descriptor):
                return True
        except OSError:
            continue
    return False
