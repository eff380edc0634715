"""Detached background processes, recorded by PID in ``DIR/run/pids.json``.

Every process is started in its own session (``setsid``), so its PID is also
its process-group id and ``down`` can signal the whole group: SIGTERM, wait,
then SIGKILL, and wait until nothing of it is left.  Before signalling, the
recorded command line is compared with ``/proc/<pid>/cmdline`` so a recycled
PID is never hit.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time


def pidfile(d: str) -> str:
    return os.path.join(d, "run", "pids.json")


def load(d: str) -> dict:
    try:
        with open(pidfile(d)) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def _save(d: str, pids: dict) -> None:
    os.makedirs(os.path.dirname(pidfile(d)), exist_ok=True)
    tmp = pidfile(d) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(pids, f, indent=1)
    os.replace(tmp, pidfile(d))


def cmdline(pid: int):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode() for a in f.read().split(b"\0") if a]
    except OSError:
        return None


def state(pid: int):
    """Process state letter (R, S, Z, ...) or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def alive(pid: int) -> bool:
    return state(pid) not in (None, "Z", "X")


def session_members(sid: int) -> list[int]:
    """Live processes whose session id is ``sid`` (a daemon and its children)."""
    out = []
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                with open(f"/proc/{e}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
                out.append(int(e))
    return out


def spawn(d: str, name: str, argv: list[str], cwd: str | None = None) -> int:
    """Start ``argv`` detached (own session, output to ``DIR/logs/<name>.log``)."""
    logdir = os.path.join(d, "logs")
    os.makedirs(logdir, exist_ok=True)
    with open(os.path.join(logdir, name + ".log"), "ab") as log:
        # A parent may have blocked signals (Foundation's Process does, for its children);
        # the daemons must see SIGTERM, so their mask is cleared.
        p = subprocess.Popen(argv, cwd=cwd or d, stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                             preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_SETMASK, []))
    record(d, name, p.pid, argv)
    return p.pid


def record(d: str, name: str, pid: int, argv) -> None:
    pids = load(d)
    pids[name] = {"pid": pid, "cmdline": argv or cmdline(pid)}
    _save(d, pids)


def ours(entry: dict) -> bool:
    cl = cmdline(entry["pid"])
    return bool(cl) and alive(entry["pid"]) and (
        cl == entry["cmdline"] or os.path.basename(cl[0]) == os.path.basename(entry["cmdline"][0]))


def _members(pid: int) -> list[int]:
    return [p for p in session_members(pid)] or ([pid] if alive(pid) else [])


def stop(entry: dict, timeout: float = 5.0) -> list[int]:
    """SIGTERM the process's session/group, then SIGKILL; return PIDs still alive (none)."""
    pid = entry["pid"]
    if not ours(entry) and not session_members(pid):
        return []
    for p in _members(pid):
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    if not wait_gone(pid, timeout):
        for p in _members(pid):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_gone(pid, timeout)
    return _members(pid)


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is an exited child of this process (``up`` ran in-process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_gone(sid: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        _reap(sid)
        if not _members(sid):
            return True
        time.sleep(0.02)
    return not _members(sid)
