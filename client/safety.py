"""Warnings about unsafe network setups, shared by the server's start-up and the SDK.

Standard library only: the server imports this without the client's dependencies mattering.
"""

from __future__ import annotations

import ipaddress


def split_host(address: str) -> str:
    """The host of ``host:port``, ``[v6]:port``, ``ipv4:host:port`` or a bare host."""
    addr = address.strip()
    for scheme in ("ipv4:", "ipv6:", "dns:///", "dns:"):
        if addr.startswith(scheme):
            addr = addr[len(scheme):]
    if addr.startswith("["):
        return addr[1:addr.find("]")] if "]" in addr else addr[1:]
    if addr.count(":") == 1:
        return addr.rsplit(":", 1)[0]
    return addr  # a bare host, or a bare IPv6 address


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1, localhost and unix sockets: reachable from this machine only."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = split_host(address)
    if host.lower() in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def insecure_bind_warning(address: str, auth_on: bool) -> str | None:
    """The warning a server should log loudly at start when it listens on ``address`` beyond
    this machine without authentication (None when that is not the case)."""
    if auth_on or is_loopback(address):
        return None
    host = split_host(address)
    where = "every network interface" if host in ("0.0.0.0", "::", "") else host
    return (f"WARNING: hpod server listens on {address} ({where}) with authentication OFF: "
            "anyone who can reach this port can create, read and stop studies and act as a "
            "worker. Set tokens (--tokens-file or HPOD_TOKENS; `python -m "
            "hpod.server.service.auth TENANT` makes one) or listen on 127.0.0.1 (--host "
            "127.0.0.1).")


def plaintext_token_warning(address: str, token: str | None, tls: bool) -> str | None:
    """The warning for a client about to send a bearer token unencrypted to another machine."""
    if not token or tls or is_loopback(address):
        return None
    return (f"sending an hpod token to {address} over plaintext: anyone on the path can read "
            "and reuse it; use TLS (tls_ca=... or HPOD_TLS_CA) unless a mesh encrypts this hop")
