"""The caller's IP address: the socket peer, or, behind trusted proxies, the right-most untrusted hop. API layer.

X-Forwarded-For is read right to left and only while each hop is a trusted proxy, so a caller cannot choose
its own address by sending the header: anything it wrote stands to the left of what its proxy appended.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Sequence[str]) -> tuple[Network, ...]:
    """Trusted proxies as given in settings: addresses or CIDR ranges."""
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def client_ip(peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    address = peer or "unknown"
    if not trusted or not _is_trusted(address, trusted):
        return address
    for hop in reversed((forwarded_for or "").split(",")):
        hop = hop.strip()
        if not hop:
            continue
        if not _is_trusted(hop, trusted):
            return hop
        address = hop
    return address


def _is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)
