"""SSRF protection for outbound webhook URLs.

Two layers, both driven by one `SsrfPolicy`:

* `SsrfPolicy.check_url` is a syntax-level check with no DNS. It refuses odd schemes,
  userinfo, backslashes, control characters and internal host names, and it decodes IP
  literals in every encoding resolvers accept ("2130706433", "0177.0.0.1", "0x7f.1",
  "127.1", "[::ffff:127.0.0.1]", "[64:ff9b::7f00:1]"...) before checking the address.
  `check_url_resolved` adds a DNS lookup; use it when a destination is created.
* At connect time the delivery client (libcurl, `destinations/webhook.py`) checks each
  address it is about to connect to with `check_ip`, in its open-socket callback, and
  refuses a blocked one before connecting: a DNS rebinding after creation is caught and
  connections go only to checked addresses.

The open-socket check sees resolved names and literals alike, but a deliverer calls
`policy.check_url(url)` before every request as well, so an unsafe URL never reaches the
client. Redirects must not be followed (each hop would need its own check), and proxies
from the environment must not be used.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from urllib.parse import urlsplit

from tidegate.errors import UnsafeUrl

__all__ = ["ParsedTarget", "SsrfPolicy"]

IPAddress = IPv4Address | IPv6Address

_DEFAULT_PORTS = {"http": 80, "https": 443}
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f-\x9f\\]")
_PORT = re.compile(r"0*[0-9]{1,5}")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
# Names that only ever resolve inside a private network (or to this machine).
_INTERNAL_SUFFIXES = (
    "localhost",
    "local",
    "localdomain",
    "internal",
    "intranet",
    "lan",
    "home.arpa",
    "corp",
    "private",
    "svc",
)

# Checked in order, so the most specific category wins (metadata before link-local...).
_BLOCKED_CATEGORIES = {
    "a cloud metadata address": "169.254.169.254/32 100.100.100.200/32 fd00:ec2::254/128",
    "an unspecified address": "0.0.0.0/8 ::/128",
    "a loopback address": "127.0.0.0/8 ::1/128",
    "a private address": "10.0.0.0/8 172.16.0.0/12 192.168.0.0/16",
    "a private (unique local) address": "fc00::/7",
    "a link-local address": "169.254.0.0/16 fe80::/10",
    "a site-local address": "fec0::/10",
    "a carrier-grade NAT address": "100.64.0.0/10",
    "a multicast address": "224.0.0.0/4 ff00::/8",
    "the broadcast address": "255.255.255.255/32",
    "a reserved address": "240.0.0.0/4 192.0.0.0/24 192.88.99.0/24",
    "a documentation address": "192.0.2.0/24 198.51.100.0/24 203.0.113.0/24"
    " 2001:db8::/32 3fff::/20",
    "a benchmarking address": "198.18.0.0/15 2001:2::/48",
    "a discard-only address": "100::/64",
    "a local-use NAT64 address": "64:ff9b:1::/48",
}
_BLOCKED = [
    (ip_network(cidr), category)
    for category, cidrs in _BLOCKED_CATEGORIES.items()
    for cidr in cidrs.split()
]
_IPV4_COMPATIBLE = IPv6Network("::/96")
_NAT64 = IPv6Network("64:ff9b::/96")


_PASSED_KEPT = 4_096


@dataclass(frozen=True, slots=True)
class ParsedTarget:
    """A URL that passed `SsrfPolicy.check_url`. `ip` is None when `host` is a name."""

    scheme: str
    host: str
    port: int
    ip: IPAddress | None


class SsrfPolicy:
    """Decides which outbound destinations webhooks may reach."""

    def __init__(self, allow_cidrs: Sequence[str] = (), *, allow_http: bool = True) -> None:
        """`allow_cidrs` bypass the block list (development and tests only)."""
        if isinstance(allow_cidrs, str):
            raise ValueError("allow_cidrs must be a sequence of CIDR strings, not one string")
        self._allowed: list[IPv4Network | IPv6Network] = []
        for cidr in allow_cidrs:
            try:
                self._allowed.append(ip_network(cidr.strip(), strict=True))
            except ValueError as exc:
                raise ValueError(f"invalid CIDR {cidr!r} in SSRF allow-list: {exc}") from exc
        self._schemes = ("http", "https") if allow_http else ("https",)
        # URLs that passed: the policy never changes, and a worker checks the same few
        # destination URLs before every attempt. Cleared when full.
        self._passed: dict[str, ParsedTarget] = {}

    def check_url(self, url: str) -> ParsedTarget:
        """Check `url` without DNS; raise `UnsafeUrl` or return its normalised target."""
        target = self._passed.get(url)
        if target is None:
            target = self._check_url(url)
            if len(self._passed) >= _PASSED_KEPT:
                self._passed.clear()
            self._passed[url] = target
        return target

    def _check_url(self, url: str) -> ParsedTarget:
        if _FORBIDDEN_CHARS.search(url) or any(ch.isspace() for ch in url):
            raise UnsafeUrl("URL contains whitespace, control characters or backslashes")
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise UnsafeUrl(f"malformed URL: {exc}") from exc
        scheme = parts.scheme.lower()
        if scheme not in self._schemes:
            allowed = " or ".join(self._schemes)
            raise UnsafeUrl(f"URL scheme must be {allowed}, not {scheme or 'missing'!r}")
        netloc = parts.netloc
        if "@" in netloc:
            raise UnsafeUrl("URL must not contain credentials (userinfo with '@')")
        if netloc.startswith("["):
            end = netloc.find("]")
            if end < 0:
                raise UnsafeUrl("unterminated IPv6 literal in URL host")
            host_text, port_text = netloc[1:end], netloc[end + 1 :]
            ip: IPAddress | None = _parse_ipv6_literal(host_text)
        else:
            host_text, colon, port_text = netloc.partition(":")
            port_text = colon + port_text
            ip = None
        if port_text and not port_text.startswith(":"):
            raise UnsafeUrl("malformed URL authority")
        port = _parse_port(port_text[1:], scheme)
        if ip is None:
            host = _normalise_host_name(host_text)
            ip = _parse_ipv4(host)
        if ip is not None:
            self.check_ip(ip)
            return ParsedTarget(scheme, str(ip), port, ip)
        _refuse_internal_name(host)
        return ParsedTarget(scheme, host, port, None)

    def check_ip(self, ip: IPAddress) -> None:
        """Raise `UnsafeUrl` unless `ip` is a public address or is explicitly allowed."""
        category = self._blocked_category(ip)
        if category is not None:
            raise UnsafeUrl(f"destination resolves to {ip}, {category}")

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Resolve `host` and check every address; any blocked address refuses the host.

        DNS failures raise `OSError` (socket.gaierror) unchanged: they are failed
        attempts, not policy refusals.
        """
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses: list[IPAddress] = []
        for family, *_, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            address = ip_address(str(sockaddr[0]).partition("%")[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise OSError(f"no IP addresses found for {host!r}")
        for address in addresses:
            self.check_ip(address)
        return addresses

    async def check_url_resolved(self, url: str) -> ParsedTarget:
        """`check_url`, then `resolve` for host names (use when creating a destination)."""
        target = self.check_url(url)
        if target.ip is None:
            await self.resolve(target.host, target.port)
        return target

    def _blocked_category(self, ip: IPAddress) -> str | None:
        """The category that blocks `ip` (with article), or None if it may be reached."""
        if any(ip.version == net.version and ip in net for net in self._allowed):
            return None
        for network, category in _BLOCKED:
            if ip in network:
                return category
        if isinstance(ip, IPv4Address):
            return None if ip.is_global else "a non-global address"
        # Forms carrying an IPv4 address: the IPv4 host is the real destination.
        embedded = ip.ipv4_mapped
        if embedded is None and (ip in _NAT64 or ip in _IPV4_COMPATIBLE):
            embedded = IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            inner = self._blocked_category(embedded)
            return None if inner is None else f"{inner} (embedded IPv4 {embedded})"
        # Tunnels through relays: refuse the whole range, naming a blocked IPv4 if any.
        tunnel = ("a 6to4 address", ip.sixtofour) if ip.sixtofour is not None else None
        if ip.teredo is not None:
            tunnel = ("a Teredo address", ip.teredo[1])
        if tunnel is not None:
            kind, tunnelled = tunnel
            inner = self._blocked_category(tunnelled)
            return kind if inner is None else f"{inner} (embedded IPv4 {tunnelled})"
        return None if ip.is_global else "a non-global address"


def _parse_port(text: str, scheme: str) -> int:
    if not text:
        return _DEFAULT_PORTS[scheme]
    port = int(text) if _PORT.fullmatch(text) else 0
    if not 1 <= port <= 65535:
        raise UnsafeUrl(f"URL port must be in 1..65535, not {text!r}")
    return port


def _parse_ipv6_literal(text: str) -> IPv6Address:
    """`[...]` host content; a zone id ("%25eth0") is dropped."""
    address = text.partition("%")[0]
    try:
        return IPv6Address(address)
    except ValueError:
        raise UnsafeUrl(f"invalid IPv6 literal in URL host: [{text}]") from None


def _normalise_host_name(text: str) -> str:
    """Lower-case, IDNA-encoded ASCII host; refuses empty, escaped or dotted-end hosts."""
    if not text:
        raise UnsafeUrl("URL has no host")
    if "%" in text:
        raise UnsafeUrl("percent-encoded URL hosts are not accepted")
    try:
        host = text.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise UnsafeUrl(f"invalid host name {text!r}") from None
    if host.endswith("."):
        raise UnsafeUrl(f"host names with a trailing dot are not accepted: {host!r}")
    return host


def _parse_ipv4(host: str) -> IPv4Address | None:
    """Decode IPv4 the way inet_aton/WHATWG do ("127.1", "0x7f.1", "0177.0.0.1", "2130706433").

    Returns None for a host name; refuses a host ending in a number that is not a valid
    address (resolvers would either reject it or read it in surprising ways).
    """
    labels = host.split(".")
    if not _NUMERIC_LABEL.fullmatch(labels[-1]):
        return None
    numbers = [n for n in map(_parse_ipv4_number, labels) if n is not None]
    if len(labels) <= 4 and len(numbers) == len(labels):
        *head, last = numbers
        if all(n <= 255 for n in head) and last < 256 ** (4 - len(head)):
            for index, number in enumerate(head):
                last += number << (8 * (3 - index))
            return IPv4Address(last)
    raise UnsafeUrl(f"malformed numeric host {host!r}")


def _parse_ipv4_number(label: str) -> int | None:
    """One IPv4 part: hex with "0x", octal with a leading "0", else decimal."""
    if not label or len(label) > 40:
        return None
    if label.startswith("0x"):
        digits = label[2:]
        if not digits:
            return 0
        return int(digits, 16) if re.fullmatch(r"[0-9a-f]+", digits) else None
    if len(label) > 1 and label.startswith("0"):
        return int(label[1:], 8) if re.fullmatch(r"[0-7]+", label[1:]) else None
    return int(label) if re.fullmatch(r"[0-9]+", label) else None


def _refuse_internal_name(host: str) -> None:
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in host.split(".")):
        raise UnsafeUrl(f"invalid host name {host!r}")
    for suffix in _INTERNAL_SUFFIXES:
        if host == suffix or host.endswith("." + suffix):
            raise UnsafeUrl(f"{host!r} is an internal host name")
    if "." not in host:
        raise UnsafeUrl(f"single-label host name {host!r} would resolve to an internal host")
