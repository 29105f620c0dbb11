"""Servers started on loopback: their ports, and a server that dies before it answers."""

import subprocess
import sys

import pytest

from dc_pipeline.ops.loopback import EPHEMERAL_RANGE, _listen_range, free_ports, wait_for_location, wait_for_port


def test_free_ports_are_distinct_and_outside_the_ephemeral_range():
    low, high = _listen_range()
    ports = free_ports(20)
    assert len(set(ports)) == 20 and all(low <= p < high for p in ports)
    eph_low, eph_high = (int(v) for v in EPHEMERAL_RANGE.read_text().split()[:2])
    assert not any(eph_low <= p <= eph_high for p in ports)  # where the kernel hands out ports to clients


def test_the_port_range_leaves_the_ephemeral_range_wherever_it_lies(tmp_path, monkeypatch):
    from dc_pipeline.ops import loopback

    for ephemeral, expected in (
        ("32768\t60999", (15000, 32768)),
        ("20000 65535", (15000, 20000)),
        ("10000 40000", (40001, 57769)),
        ("1024 65535", None),
        ("50000 60000", (15000, 32768)),
    ):
        (tmp_path / "range").write_text(ephemeral)
        monkeypatch.setattr(loopback, "EPHEMERAL_RANGE", tmp_path / "range")
        assert loopback._listen_range() == expected, ephemeral
    ports = loopback.free_ports(3)  # the kernel's choice when there is no room
    assert len(set(ports)) == 3


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
