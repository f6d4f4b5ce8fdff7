"""vod-coordinator's Raft addresses are resolved before the reactor runs (Raft runs on the reactor thread)."""

import pytest

from vod.coordinator.cli import resolve_raft_address
from vod.errors import UsageError


def test_names_become_ip_addresses_and_ips_stay():
    assert resolve_raft_address("localhost:7001", "--raft") == "127.0.0.1:7001"
    assert resolve_raft_address("127.0.0.1:7002", "--peers") == "127.0.0.1:7002"


@pytest.mark.parametrize("address, message", [("nosuch.invalid:7001", "cannot resolve nosuch.invalid"),
                                              ("127.0.0.1", "is not HOST:PORT")])
def test_a_bad_raft_address_names_the_flag_and_the_problem(address, message):
    with pytest.raises(UsageError, match=message) as err:
        resolve_raft_address(address, "--peers")
    assert "--peers" in str(err.value)
