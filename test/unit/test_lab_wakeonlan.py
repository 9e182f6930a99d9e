"""The lab's Wake-on-LAN listener: magic packets recognised (as `ravada-node wake` sends them),
anything else ignored, on real UDP sockets.  The whole path (a node's packet on the lab switch
powers a node on) is test_lab_ops's round trip."""
import socket
import threading

from ocf_ravada import wol
from ravada_lab.layout import LabLayout
from ravada_lab.wakeonlan import Listener, magic_mac

MAC = "02:00:0a:63:00:02"


def test_a_magic_packet_names_its_mac_wherever_it_sits_in_the_datagram():
    packet = wol.magic_packet(wol.parse_mac(MAC))
    assert magic_mac(packet) == MAC
    assert magic_mac(b"password" + b"\xff" * 3 + packet + b"\x00\x01") == MAC


def test_what_is_not_a_magic_packet_wakes_nobody():
    packet = wol.magic_packet(wol.parse_mac(MAC))
    assert magic_mac(b"") is None
    assert magic_mac(packet[:-1]) is None                       # the 16th copy cut short
    assert magic_mac(packet[:6] + packet[12:] + b"\x00" * 6) is None   # one copy differs
    assert magic_mac(b"\xff" * 200) is None


def test_lab_nodes_have_fixed_distinct_macs():
    nodes = LabLayout.for_lab("t").nodes(16)
    macs = [node.mac for node in nodes]
    assert len(set(macs)) == 16
    assert all(wol.parse_mac(mac) for mac in macs)              # unicast, well formed


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_listener_hears_the_packet_ravada_node_wake_sends_on_each_port():
    heard: list[tuple[str, str]] = []
    arrived = threading.Event()

    def on_magic(mac: str, sender: str) -> None:
        heard.append((mac, sender))
        if len(heard) == 2:
            arrived.set()

    ports = (free_udp_port(), free_udp_port())
    listener = Listener("lo", on_magic, ports)
    listener.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as noise:
            noise.sendto(b"not magic", ("127.0.0.1", ports[0]))
        wol.send(wol.parse_mac(MAC), "127.0.0.1", ports)
        assert arrived.wait(5), heard
    finally:
        listener.close()
    assert heard == [(MAC, "127.0.0.1")] * 2
