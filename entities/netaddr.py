"""Where plain HTTP is allowed: loopback only, on both ends (docs/THREATS.md, "Network").

Services refuse to listen in clear on any other address; devices refuse to speak in clear to
any other host. Pure.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

__all__ = ["is_loopback", "plain_http_refusal"]


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1 (brackets allowed)."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_http_refusal(url: str) -> str | None:
    """Why ``url`` may not be used (``http://`` to a host that is not loopback), or None."""
    parts = urlsplit(url)
    if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        return (f"{url}: plain HTTP is for loopback only; use https:// (the device pins its fleet CA, "
                "device init --tls-ca)")
    return None
