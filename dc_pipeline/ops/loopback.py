"""Servers on 127.0.0.1 that this machine starts (the local cluster, the UIs, the scoring service in tests and
benchmarks): free ports, and waiting until a server answers, or failing with its log when it died."""

from __future__ import annotations

import json
import os
import random
import socket
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from dc_pipeline.catalog import CODE_LOCATION
from dc_pipeline.core.atomic import process_alive

HOST = "127.0.0.1"
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LISTEN_PORTS = (15000, 32768)
"""Where servers are placed: below Linux's ephemeral range (32768-60999 by default), which the kernel hands
out to every outgoing connection and every ``bind(0)``; a port taken from there can be taken again by a
client connection before the server binds it (or be connected to itself by a probe)."""


def _listen_range() -> tuple[int, int] | None:
    """Where to draw servers' ports: ``LISTEN_PORTS``, or next to the ephemeral range where the two overlap;
    ``None`` when there is no room outside it (the kernel's ``bind(0)`` is all that is left)."""
    try:
        eph_low, eph_high = (int(v) for v in EPHEMERAL_RANGE.read_text().split()[:2])
    except (OSError, ValueError):
        return LISTEN_PORTS
    low, high = LISTEN_PORTS
    if eph_high < low or eph_low >= high:
        return LISTEN_PORTS
    for candidate in ((low, eph_low), (eph_high + 1, min(65536, eph_high + 1 + high - low)), (1024, eph_low)):
        if candidate[1] - candidate[0] >= 1000:
            return candidate
    return None


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports on 127.0.0.1 that nothing is bound to now, outside the ephemeral range where it
    leaves room."""
    span = _listen_range()
    candidates = random.sample(range(*span), k=min(span[1] - span[0], 64 * n)) if span else [0] * (64 * n)
    held: list[socket.socket] = []
    try:
        for port in candidates:
            s = socket.socket()
            try:
                s.bind((HOST, port))
            except OSError:
                s.close()
                continue
            held.append(s)
            if len(held) == n:
                return [h.getsockname()[1] for h in held]
    finally:
        for s in held:
            s.close()
    raise OSError(f"no {n} free ports on {HOST}" + (f" in {span[0]}-{span[1] - 1}" if span else ""))


def free_port() -> int:
    return free_ports(1)[0]


def exited(pid: int) -> bool:
    """Whether process ``pid`` is gone (reaped here when it is this process's child, not left a zombie)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return True
    except ChildProcessError:  # not our child, or reaped already
        pass
    return not process_alive(pid)


def _died(pid: int | None, log_file: Path | None) -> RuntimeError | None:
    if pid is None or not exited(pid):
        return None
    tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-20:]) if log_file and log_file.is_file() else ""
    return RuntimeError(f"process {pid} exited before it answered" + (f"; its log ends:\n{tail}" if tail else ""))


def wait_for_port(port: int, timeout: float = 60.0, pid: int | None = None, log_file: Path | None = None) -> None:
    """Until something accepts on ``port``; raised at once when process ``pid`` (the server) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex((HOST, port)) == 0:
                return
        if died := _died(pid, log_file):
            raise died
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {HOST}:{port} after {timeout:g} s")


def graphql(url: str, query: str, variables: Mapping | None = None, timeout: float = 30.0) -> dict:
    """A query to the Dagster webserver at ``url`` (loopback): the decoded JSON answer."""
    request = urllib.request.Request(  # noqa: S310 (an http URL on loopback)
        f"{url}/graphql",
        data=json.dumps({"query": query, "variables": dict(variables or {})}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return json.loads(response.read())


LOCATION_QUERY = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
LOCATION_QUERY += "locationOrLoadError { __typename ... on PythonError { message } } } } } }"


def wait_for_location(url: str, timeout: float = 180.0, pid: int | None = None, log_file: Path | None = None) -> None:
    """Until the webserver at ``url`` answers and the code location has loaded; a load error is raised, and so
    is the exit of process ``pid`` (the webserver)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            entries = graphql(url, LOCATION_QUERY)["data"]["workspaceOrError"]["locationEntries"]
        except OSError:  # not listening yet, or closed on us while starting
            entries = []
        for entry in entries:
            if entry["name"] == CODE_LOCATION and entry["loadStatus"] == "LOADED":
                loaded = entry["locationOrLoadError"]
                if loaded and loaded["__typename"] == "PythonError":
                    raise RuntimeError(f"code location failed to load: {loaded['message']}")
                return
        if died := _died(pid, log_file):
            raise died
        time.sleep(1.0)
    raise TimeoutError(f"the code location did not load at {url} within {timeout:g} s")
