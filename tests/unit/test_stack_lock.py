"""launch.stack in-process (fast): the data directory lock, the port claims, whose socket is on a port.

The same situations with real ``python -m launch.run`` processes are in tests/system/test_stack.py (slow).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from engine.settings import Settings
from launch.stack import StackRefused, acquire_data_dir, claim_ports, listens_on
from testing.processes import free_port


def settings_for(data_dir: Path, **kw: int) -> Settings:
    ports = {"temporal_port": free_port(), "temporal_ui_port": free_port(), "api_port": free_port(), **kw}
    return Settings(data_dir=data_dir, **ports)  # type: ignore[arg-type]


def test_a_second_lock_on_the_data_directory_is_refused_naming_the_holder(tmp_path: Path) -> None:
    first = settings_for(tmp_path / "data")
    lock = acquire_data_dir(first)
    try:
        # Another open of the lock file conflicts, even in this process (flock is per open file).
        with pytest.raises(StackRefused) as refused:
            acquire_data_dir(settings_for(tmp_path / "data"))
        message = str(refused.value)
        assert f"pid {os.getpid()}" in message
        assert str((tmp_path / "data").resolve()) in message
        for port in (first.api_port, first.temporal_port, first.temporal_ui_port):
            assert str(port) in message
    finally:
        lock.release()
    # Released (as the kernel does when the process dies): the next stack takes it.
    acquire_data_dir(settings_for(tmp_path / "data")).release()


def test_another_data_directory_is_independent(tmp_path: Path) -> None:
    one = acquire_data_dir(settings_for(tmp_path / "one"))
    try:
        acquire_data_dir(settings_for(tmp_path / "two")).release()
    finally:
        one.release()


@pytest.mark.parametrize("which", ["temporal_port", "temporal_ui_port", "api_port"])
def test_a_taken_port_is_refused(tmp_path: Path, which: str) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        port = squatter.getsockname()[1]
        with pytest.raises(StackRefused) as refused:
            claim_ports(settings_for(tmp_path, **{which: port}))
        assert f"127.0.0.1:{port} is already taken" in str(refused.value)
        assert f"PROGRESSION_{which.upper()}" in str(refused.value)


def test_the_api_socket_is_claimed_listening(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    sock = claim_ports(settings)
    try:
        assert sock.getsockname()[1] == settings.api_port
        assert listens_on(os.getpid(), settings.api_port) is True
        with pytest.raises(StackRefused):  # nobody else gets it meanwhile
            claim_ports(settings_for(tmp_path, api_port=settings.api_port))
    finally:
        sock.close()
    assert listens_on(os.getpid(), settings.api_port) is False
