"""Where webhooks may call (BOTLNEK_WEBHOOK_ALLOWED_HOSTS), and calling there only.

A write token must not turn the server into a scanner of its own network: by
default a webhook may call only hosts whose every address is globally routable
(`external`). The allow-list holds host names (`hooks.example.com`), domains with
their subdomains (`.example.com`), IP addresses, CIDR networks, and the classes
`external`, `loopback`, `private` (RFC 1918, RFC 4193, link-local, CGNAT) and `*`.
A host is allowed when its name matches a name entry, or when every address it
resolves to matches an address, network or class entry.

The check resolves the host; the caller then connects to the addresses it
answered (`check` returns them), never resolving again in between, so a name
cannot point elsewhere between the check and the connection (DNS rebinding).
Addresses are judged by what they reach, however written: glibc reads
`2130706433` and `0x7f.1` as 127.0.0.1, and IPv6 forms that carry an IPv4
address (`::ffff:127.0.0.1`, NAT64, 6to4) count as that address.
"""

import asyncio
import functools
import ipaddress
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SETTING = "BOTLNEK_WEBHOOK_ALLOWED_HOSTS"
CLASSES = ("external", "loopback", "private", "*")
DEFAULT = "external"

_PRIVATE = tuple(
    ipaddress.ip_network(network)
    for network in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",  # RFC 1918
        "100.64.0.0/10",  # CGNAT, RFC 6598
        "169.254.0.0/16",  # link-local, cloud metadata services included
        "fc00::/7",  # RFC 4193
        "fe80::/10",  # link-local
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")


class Refused(ValueError):
    """A webhook URL whose host the allow-list does not admit, or that does not
    resolve; the message names the host and the setting."""


def reached(address: Address) -> Address:
    """The address a connection to `address` reaches: an IPv6 form carrying an
    IPv4 address is that IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address in _SIX_TO_FOUR:
            return ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF)
    return address


def address_class(address: Address) -> str:
    """`loopback`, `private`, `external`, or `other` (unspecified, multicast,
    reserved, documentation ranges …: never called by class)."""
    address = reached(address)
    if address.is_loopback:
        return "loopback"
    if any(address in network for network in _PRIVATE):
        return "private"
    special = (
        address.is_unspecified
        or address.is_multicast
        or address.is_reserved
        or getattr(address, "is_site_local", False)
    )
    if address.is_global and not special:
        return "external"
    return "other"


@dataclass(frozen=True)
class AllowList:
    """A parsed BOTLNEK_WEBHOOK_ALLOWED_HOSTS."""

    text: str
    names: frozenset[str]
    domains: tuple[str, ...]  # ".example.com"
    networks: tuple[Network, ...]
    classes: frozenset[str]

    @classmethod
    def parse(cls, raw: str) -> "AllowList":
        """The allow-list in `raw`; empty means the default (`external`)."""
        entries = [entry.strip().lower() for entry in raw.split(",") if entry.strip()]
        entries = entries or [DEFAULT]
        names, domains, networks, classes = set(), [], [], set()
        for entry in entries:
            if entry in CLASSES:
                classes.add(entry)
            elif (network := _network(entry)) is not None:
                networks.append(network)
            elif entry.startswith(".") and _NAME.fullmatch(entry[1:]):
                domains.append(entry)
            elif _NAME.fullmatch(entry.rstrip(".")):
                names.add(entry.rstrip("."))
            else:
                raise ImproperlyConfigured(
                    f"{SETTING}: {entry!r} is neither a host name, a .domain, an IP "
                    f"address, a CIDR network nor one of {', '.join(CLASSES)}"
                )
        return cls(
            ", ".join(entries),
            frozenset(names),
            tuple(domains),
            tuple(networks),
            frozenset(classes),
        )

    def allows_name(self, host: str) -> bool:
        if "*" in self.classes:
            return True
        host = host.lower().rstrip(".")
        return host in self.names or any(
            host == domain[1:] or host.endswith(domain) for domain in self.domains
        )

    def allows_address(self, address: Address) -> bool:
        if "*" in self.classes or address_class(address) in self.classes:
            return True
        return any(
            candidate in network
            for candidate in {address, reached(address)}
            for network in self.networks
        )


def _network(entry: str) -> Network | None:
    try:
        return ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        return None


def resolve(host: str, port: int) -> list[Address]:
    """Every address `host` resolves to, in the resolver's order (tests replace
    this with a resolver of their own)."""
    found: list[Address] = []
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        address = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


def check(url: str, allowed: AllowList) -> list[Address]:
    """The addresses to connect to for `url`, in order to try them; Refused if its
    host does not resolve or is not allowed. Blocks while resolving: call it off
    the event loop."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError, ValueError) as exc:
        raise Refused(f"host {host!r} does not resolve ({exc})") from None
    if not addresses:
        raise Refused(f"host {host!r} does not resolve")
    if allowed.allows_name(host):
        return addresses
    for address in addresses:
        if not allowed.allows_address(address):
            what = "is" if str(address) == host else "resolves to"
            raise Refused(
                f"host {host!r} {what} {address} ({address_class(address)}), "
                f"which {SETTING} ({allowed.text}) does not allow"
            )
    return addresses


RESOLVE_SECONDS = 5


@functools.cache
def _resolver() -> ThreadPoolExecutor:
    # Threads of their own, and many: a resolver that hangs for one webhook's
    # host holds a thread until the system resolver gives up.
    return ThreadPoolExecutor(max_workers=64, thread_name_prefix="botlnek-resolve")


async def check_async(url: str, allowed: AllowList) -> list[Address]:
    """check(), off the event loop, for at most RESOLVE_SECONDS."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_SECONDS):
            return await loop.run_in_executor(_resolver(), check, url, allowed)
    except TimeoutError:
        host = urlsplit(url).hostname
        raise Refused(
            f"host {host!r} did not resolve within {RESOLVE_SECONDS} s"
        ) from None


def url_rule(value: str) -> str:
    """A webhook URL's form: http(s), with a host."""
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise ValueError("has a port that is not a number from 0 to 65535") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value
