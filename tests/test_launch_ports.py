import socket

from dtutor.launch import ports


def test_the_ports_differ_and_lie_just_below_the_ephemeral_range():
    low, high = ports.ephemeral_range()
    assert 1024 <= low < high <= 65535
    found = ports.free_ports(8)
    assert len(set(found)) == 8
    assert all(low - ports.BELOW_EPHEMERAL <= port < low for port in found)


def test_a_port_taken_is_skipped_and_with_none_free_below_the_kernel_picks(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        monkeypatch.setattr(ports, "ephemeral_range", lambda: (port + 1, 60999))
        monkeypatch.setattr(ports, "BELOW_EPHEMERAL", 1)  # the only candidate is the taken port
        (chosen,) = ports.free_ports(1)
        assert chosen != port and chosen > 0
