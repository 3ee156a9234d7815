"""How a browser writes where a request goes: ``Host`` values and ``Origin``s.

``serve.allowed_hosts`` and ``serve.allowed_origins`` are kept in the form a browser sends
(lowercase, IP addresses canonical, an origin without its scheme's default port), so the API's
guard (``daemon/serve/guard.py``) compares strings. Malformed input raises ``ValueError``
saying what is wrong; the configuration turns it into a ``ConfigError`` naming the key.
"""

from __future__ import annotations

import ipaddress
import string

DEFAULT_PORTS = {"http": 80, "https": 443}
_NAME_CHARS = frozenset(string.ascii_lowercase + string.digits + "-_")
_SCHEME_CHARS = frozenset(string.ascii_lowercase + string.digits + "+-.")
_NOT_A_HOST = (
    'must be a host name or address with an optional port ("myhost", "myhost.lan:8765"), '
    "without a scheme, user or path"
)


def split_authority(text: str) -> tuple[str, int | None]:
    """``host[:port]`` as (host, port or None); an IPv6 host keeps its brackets. ValueError when malformed."""
    if text.startswith("["):
        inside, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise ValueError("an IPv6 address is written in brackets: [::1] or [::1]:8765")
        host, port_text = f"[{inside}]", (rest[1:] if rest else None)
    else:
        host, sep, after = text.partition(":")
        port_text = after if sep else None
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ValueError("the port must be a number from 1 to 65535")
    return host, int(port_text)


def canonical_host(text: str) -> str:
    """``host`` or ``host:port`` as a browser writes it in ``Host``; ValueError when it is not one."""
    value = text.strip().lower()
    if any(c in value for c in "/@?#"):
        raise ValueError(_NOT_A_HOST)
    host, port = split_authority(value)
    if host.startswith("["):
        try:
            host = f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            raise ValueError(f"{host} is not an IPv6 address") from None
    else:
        try:
            host = str(ipaddress.IPv4Address(host))
        except ValueError:
            if not host.isascii():
                raise ValueError("write an international name in its xn-- (punycode) form") from None
            if not all(label and set(label) <= _NAME_CHARS for label in host.split(".")):
                raise ValueError(_NOT_A_HOST) from None
    return host if port is None else f"{host}:{port}"


def canonical_origin(text: str) -> str:
    """``scheme://host[:port]`` as a browser sends it in ``Origin``; ValueError when it is not one."""
    value = text.strip().lower()
    if value in ("*", "null"):
        raise ValueError(
            "list each web page's origin (scheme://host[:port]); '*' or 'null' would let any page "
            "read your documents"
        )
    scheme, sep, authority = value.partition("://")
    if not sep or not scheme[:1].isalpha() or not set(scheme) <= _SCHEME_CHARS:
        raise ValueError('must be an origin: scheme://host[:port], e.g. "http://localhost:3000"')
    if not authority or "/" in authority or "@" in authority:
        raise ValueError("an origin has no path, user or trailing '/': scheme://host[:port]")
    host, port = split_authority(canonical_host(authority))
    if port is None or port == DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"  # browsers leave the default port out
    return f"{scheme}://{host}:{port}"


def is_ip_literal(host: str) -> bool:
    """Tell whether ``host`` is an IP address as a browser writes one (``10.0.0.2``, ``[fe80::1]``).

    No name resolves to it, so it cannot be rebound by DNS; ``127.1`` or ``[0::1]`` (spellings
    no browser sends) are not taken.
    """
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        return False
    return address.compressed == (host[1:-1] if bracketed else host) and bracketed == (address.version == 6)
