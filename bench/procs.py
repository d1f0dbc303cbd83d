"""Processes for the benchmark: start pinned children, stop them, and read their CPU time and memory from /proc."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

_PROC = Path("/proc")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True, slots=True)
class Placement:
    """Which CPUs each process may run on; empty sets mean no pinning (a single CPU, or not Linux)."""

    upstream: frozenset[int]
    gateway: frozenset[int]
    load: frozenset[int]


@contextlib.contextmanager
def moved(pid: int, cpus: frozenset[int], home: frozenset[int]) -> Iterator[None]:
    """Run every thread of `pid` on `cpus` for the block, then on `home` again (no-op if either is empty)."""
    if not cpus or not home or cpus == home:
        yield
        return
    _pin_threads(pid, cpus)
    try:
        yield
    finally:
        _pin_threads(pid, home)


def _pin_threads(pid: int, cpus: frozenset[int]) -> None:
    for task in (_PROC / str(pid) / "task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task.name), cpus)


def plan_cpus() -> Placement:
    """Give the gateway a core of its own; the upstream and the load generator share the rest."""
    if not hasattr(os, "sched_getaffinity"):
        return Placement(frozenset(), frozenset(), frozenset())
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return Placement(frozenset(), frozenset(), frozenset())
    first, gateway, rest = cpus[0], cpus[1], cpus[2:]
    return Placement(frozenset({first}), frozenset({gateway}), frozenset(rest or [first]))


def raise_nofile(wanted: int) -> int:
    """Raise this process's open-file limit to `wanted` (root may also raise the hard limit); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted > hard:
        with contextlib.suppress(ValueError, OSError):  # not root: stay at the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    target = max(soft, min(wanted, hard))
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def _prepare(cpus: frozenset[int], nofile: int | None) -> Callable[[], None] | None:
    if not cpus and nofile is None:
        return None

    def prepare() -> None:  # runs in the child before exec, so every thread it starts inherits the mask
        if cpus:
            os.sched_setaffinity(0, cpus)
        if nofile is not None:
            raise_nofile(nofile)

    return prepare


def spawn(
    argv: Sequence[str],
    cpus: frozenset[int],
    env: Mapping[str, str] | None = None,
    stdin: int | None = None,
    stdout: int | IO[str] | None = subprocess.PIPE,
    cwd: Path | None = None,
    nofile: int | None = None,
) -> subprocess.Popen[str]:
    """Start `argv` pinned to `cpus` (and with `nofile` open files allowed); stderr goes where `stdout` goes
    unless that is a pipe."""
    return subprocess.Popen(
        list(argv),
        env=dict(env) if env is not None else None,
        stdin=stdin,
        stdout=stdout,
        stderr=None if stdout == subprocess.PIPE else subprocess.STDOUT,
        text=True,
        cwd=cwd,
        preexec_fn=_prepare(cpus, nofile),
    )


def stop(process: subprocess.Popen[str], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds; always reaps the child."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[str] | None, timeout: float) -> None:
    """Block until something accepts connections on 127.0.0.1:port (or fail after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited with {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {timeout:g}s")


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants (a gateway may fork workers)."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            stat = _stat_fields(int(entry.name))
            if stat:
                children.setdefault(int(stat[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, ...]; [] if the process is gone."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return []
    return raw[raw.rfind(")") + 2 :].split()


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of these processes, all threads included (10 ms resolution)."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / _CLOCK_TICKS


def rss_bytes(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in (_PROC / str(pid) / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def open_fds(pids: Sequence[int]) -> int:
    """Open file descriptors of these processes (sockets included)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += sum(1 for _ in (_PROC / str(pid) / "fd").iterdir())
    return total


def nofile_limit(pid: int) -> int | None:
    """The soft open-file limit of a running process (from /proc/<pid>/limits)."""
    with contextlib.suppress(OSError):
        for line in (_PROC / str(pid) / "limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return None


def listener_pid(port: int) -> int | None:
    """The process listening on TCP `port` (to measure a gateway we did not start), found through /proc."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (_PROC / "net" / table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                    inodes.add(f"socket:[{cols[9]}]")
    pids = sorted(int(e.name) for e in _PROC.iterdir() if e.name.isdigit())
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in (_PROC / str(pid) / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return pid
    return None


def load_average() -> float:
    """The 1-minute load average (how busy the rest of the machine is)."""
    return os.getloadavg()[0]
