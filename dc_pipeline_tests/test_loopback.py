"""Servers started on loopback: their ports, and a server that dies before it answers."""

import subprocess
import sys

import pytest

from dc_pipeline.ops.loopback import EPHEMERAL_RANGE, _listen_range, free_ports, wait_for_location, wait_for_port


def test_free_ports_are_distinct_and_below_the_ephemeral_range():
    low, high = _listen_range()
    ports = free_ports(20)
    assert len(set(ports)) == 20 and all(low <= p < high for p in ports)
    ephemeral_low = int(EPHEMERAL_RANGE.read_text().split()[0])
    assert max(ports) < ephemeral_low  # where the kernel hands out ports to clients, a server's port can be taken


def test_a_server_that_exits_before_it_listens_fails_the_wait_with_its_log(tmp_path):
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "print('address already in use'); raise SystemExit(1)"], stdout=out
        )
    port = free_ports(1)[0]
    with pytest.raises(RuntimeError, match="address already in use"):
        wait_for_port(port, timeout=60, pid=proc.pid, log_file=log)
    with pytest.raises(RuntimeError, match=f"process {proc.pid} exited"):
        wait_for_location(f"http://127.0.0.1:{port}", timeout=60, pid=proc.pid)
