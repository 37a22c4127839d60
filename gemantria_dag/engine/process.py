"""A server process the project starts and leaves running: spawned detached, found again by pid, stopped
by its process group. POSIX only (posix_spawn, sessions, /proc)."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def spawn_detached(binary: Path, argv: list[str], env: dict[str, str], log: Path) -> int:
    """Start `argv` in its own session with stdin from /dev/null and its output appended to `log`, holding
    no other descriptor of ours; return its pid. Raises OSError when it cannot be run.

    posix_spawn rather than Popen: the process outlives this one, so no Popen object should own it (one
    garbage-collected while its child runs warns, and joins subprocess's reaping list).
    """
    return os.posix_spawn(
        str(binary),
        argv,
        env,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
            *((os.POSIX_SPAWN_CLOSE, fd) for fd in inherited_fds()),
        ],
        # Its own session: Ctrl-C in the starting terminal does not reach it, and stop can signal the group.
        setsid=True,
    )


def inherited_fds() -> list[int]:
    """This process's descriptors above stderr that a child would inherit (not close-on-exec).

    The engine outlives its starter: holding a copy of, say, the pipe a Dagster step's output goes
    to, it would keep whoever reads that pipe waiting for an end of file that never comes (seen:
    `make materialize` under `subprocess.run(capture_output=True)` hung until its timeout).
    """
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return []
    found = []
    for fd in fds:
        try:
            if fd > 2 and os.get_inheritable(fd):
                found.append(fd)
        except OSError:
            pass  # the descriptor listdir itself used, closed since
    return found


def exit_code(pid: int) -> int | None:
    """The exit code of our child `pid` if it has exited (reaping it), else None."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status) if done == pid else None


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send `sig` to the process group led by `pid` (a process started in its own session); gone: nothing."""
    try:
        os.killpg(pid, sig)  # started with start_new_session: its pid is its group's id
    except ProcessLookupError:
        pass
