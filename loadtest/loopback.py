"""The safety catch: a load test targets this machine unless told otherwise.

The URL's host must be ``localhost`` or resolve only to loopback addresses (127.0.0.0/8,
::1); anything else is refused before a single connection is made, unless the caller
passes ``allow_remote`` (``--allow-remote``). A name that cannot be resolved is refused too.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

SCHEMES = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class RemoteTarget(ValueError):
    """The target is not this machine (or not a URL at all)."""


def check_target(url: str, *, allow_remote: bool = False) -> None:
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise RemoteTarget(f"not an http(s) or ws(s) URL: {url!r}")
    try:
        port = parts.port or SCHEMES[parts.scheme]
    except ValueError:
        raise RemoteTarget(f"not a valid port in {url!r}") from None
    if allow_remote:
        return
    host = parts.hostname
    if host.lower() == "localhost":
        return
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            found = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            raise RemoteTarget(
                f"cannot resolve {host!r} ({exc}); only loopback targets are allowed "
                "without --allow-remote"
            ) from None
        addresses = {ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in found}
    remote = sorted(str(a) for a in addresses if not a.is_loopback)
    if remote or not addresses:
        raise RemoteTarget(
            f"{host} is not this machine ({', '.join(remote) or 'no address'}): a load test "
            "targets loopback only (127.0.0.0/8, ::1, localhost) unless --allow-remote is given"
        )
