"""Small helpers about processes and files shared by saves, checkpoints and model builds."""

from __future__ import annotations

import os


def host() -> str:
    """This machine's name as it goes into a temporary folder's name."""
    import re
    import socket

    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process (PermissionError), or no way to tell
        return True
    return True


def safe_name(name: str) -> str:
    """A class name usable in a file name."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(name)) or "class"
