"""SSRF policy: URL syntax, IP categories and DNS checks (the check at connect time is
tested with the sender, tests/unit/test_webhook_sender.py).

No external DNS: only "localhost" and IP literals are resolved.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from tidegate.errors import UnsafeUrl
from tidegate.security.ssrf import ParsedTarget, SsrfPolicy

REFUSED_URLS = [
    # schemes
    "file:///etc/passwd",
    "gopher://example.com/_x",
    "ftp://example.com/",
    "javascript:alert(1)",
    "example.com/hook",
    "//example.com/hook",
    # userinfo and '@' tricks
    "http://a@127.0.0.1",
    "http://evil.com@127.0.0.1/",
    "http://user:pass@example.com/",
    "http://example.com:80@127.0.0.1/",
    "http://127.0.0.1#@evil.com",
    "http://127.0.0.1?@evil.com",
    # syntax
    "http:///path",
    "http://",
    "http://example.com\\@127.0.0.1/",
    "http:\\\\127.0.0.1\\",
    "http://exa mple.com/",
    "http://example.com/\t",
    "http://example.com\n.evil/",
    "http://example.com\x00/",
    " http://127.0.0.1/",
    "http://example.com:0/",
    "http://example.com:65536/",
    "http://example.com:-1/",
    "http://example.com:8o/",
    "http://example.com:80:80/",
    "http://127.0.0.1%2f@evil.com/",
    "http://127.0.0.%31/",
    "http://[::1/",
    "http://[::1]x/",
    "http://[]/",
    "http://[v1.fe]/",
    "http://::1/",
    # IPv4 encodings of blocked addresses
    "http://127.0.0.1/",
    "http://127.0.0.1:8080/x",
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://0x7f.1/",
    "http://0x7F000001/",
    "http://0x7f.0x0.0x0.0x1/",
    "http://127.1/",
    "http://127.0.1/",
    "http://0/",
    "http://0.0.0.0/",
    "http://017700000001/",
    "http://0251.0376.0251.0376/",  # 169.254.169.254
    "http://\uff11\uff12\uff17\uff0e\uff10\uff0e\uff10\uff0e\uff11/",  # fullwidth 127.0.0.1 (NFKC)
    "http://127.0.0.\u200b1/",  # zero-width space, mapped to nothing by IDNA
    # malformed numeric hosts
    "http://1.2.3.4.5/",
    "http://256.0.0.1/",
    "http://1.2.3.256/",
    "http://08.0.0.1/",
    "http://1..1/",
    "http://4294967296/",
    "http://example.0x1/",
    # IPv6 literals
    "http://[::1]/",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://[::]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::127.0.0.1]/",
    "http://[64:ff9b::7f00:1]/",
    "http://[64:ff9b::a00:1]/",
    "http://[64:ff9b:1::1]/",
    "http://[2002:7f00:1::]/",
    "http://[2002:a00:1::1]/",
    "http://[2002:5db8:d822::1]/",  # 6to4 of a public address: still refused
    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",  # Teredo, client 127.0.0.1
    "http://[2001:0:4136:e378:8000:63bf:a2b7:27dd]/",  # Teredo, public client
    "http://[fe80::1%25eth0]/",
    "http://[fe80::1%eth0]/",
    "http://[fd00:ec2::254]/",
    "http://[fc00::1]/",
    "http://[fec0::1]/",
    "http://[ff02::1]/",
    "http://[100::1]/",
    "http://[2001:db8::1]/",
    # blocked IPv4 categories
    "http://169.254.169.254/latest/meta-data",
    "http://100.100.100.200/",
    "http://100.64.0.1",
    "http://10.1.2.3/",
    "http://172.16.0.1/",
    "http://172.31.255.255/",
    "http://192.168.1.1/",
    "http://169.254.1.1/",
    "http://224.0.0.1/",
    "http://239.255.255.250/",
    "http://255.255.255.255/",
    "http://240.0.0.1/",
    "http://192.0.0.8/",
    "http://192.0.2.1/",
    "http://198.51.100.7/",
    "http://203.0.113.9/",
    "http://198.18.0.1/",
    "http://198.19.255.255/",
    # internal names
    "http://localhost/",
    "http://localhost./",
    "http://LOCALHOST",
    "http://LocalHost:8000/",
    "http://foo.localhost",
    "http://a.b.localhost/",
    "http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/",  # fullwidth
    "http://example.com./",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://metadata/",
    "http://instance-data/",
    "http://printer.local/",
    "http://router.lan/",
    "http://nas.home.arpa/",
    "http://kubernetes.default.svc/",
    "http://exa_mple..com/",
    "http://-bad.example.com/",
    "http://bad!.example.com/",
]

ACCEPTED = [
    ("https://example.com/hook", ParsedTarget("https", "example.com", 443, None)),
    ("HTTPS://Example.COM:8443/x?y=1#frag", ParsedTarget("https", "example.com", 8443, None)),
    ("http://hooks.example.co.uk/a/b", ParsedTarget("http", "hooks.example.co.uk", 80, None)),
    ("https://bücher.example/", ParsedTarget("https", "xn--bcher-kva.example", 443, None)),
    ("https://api.example.com:/x", ParsedTarget("https", "api.example.com", 443, None)),
    (
        "https://93.184.216.34/x",
        ParsedTarget("https", "93.184.216.34", 443, IPv4Address("93.184.216.34")),
    ),
    ("http://1.1.1.1:8080/", ParsedTarget("http", "1.1.1.1", 8080, IPv4Address("1.1.1.1"))),
    (
        "http://[2606:4700::1111]/",
        ParsedTarget("http", "2606:4700::1111", 80, IPv6Address("2606:4700::1111")),
    ),
    (
        "http://[64:ff9b::808:808]/",  # NAT64 of 8.8.8.8 (DNS64 networks)
        ParsedTarget("http", "64:ff9b::808:808", 80, IPv6Address("64:ff9b::808:808")),
    ),
    ("https://127.0.0.1.example.com/", ParsedTarget("https", "127.0.0.1.example.com", 443, None)),
]


@pytest.fixture
def policy() -> SsrfPolicy:
    return SsrfPolicy()


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_refused_urls(policy: SsrfPolicy, url: str) -> None:
    with pytest.raises(UnsafeUrl) as caught:
        policy.check_url(url)
    assert caught.value.status == 422
    assert caught.value.detail


@pytest.mark.parametrize(("url", "expected"), ACCEPTED)
def test_accepted_urls(policy: SsrfPolicy, url: str, expected: ParsedTarget) -> None:
    assert policy.check_url(url) == expected


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://127.0.0.1/", "127.0.0.1, a loopback address"),
        ("http://2130706433/", "127.0.0.1, a loopback address"),
        ("http://0/", "0.0.0.0, an unspecified address"),
        ("http://169.254.169.254/", "a cloud metadata address"),
        ("http://[fd00:ec2::254]/", "a cloud metadata address"),
        ("http://100.64.0.1/", "a carrier-grade NAT address"),
        ("http://10.0.0.1/", "a private address"),
        ("http://[::ffff:7f00:1]/", "a loopback address (embedded IPv4 127.0.0.1)"),
        ("http://[2002:7f00:1::]/", "a loopback address (embedded IPv4 127.0.0.1)"),
        ("http://[2002:5db8:d822::1]/", "a 6to4 address"),
        ("http://[fe80::1%25eth0]/", "a link-local address"),
        ("http://foo.localhost/", "internal host name"),
        ("http://user@example.com/", "credentials"),
        ("ftp://example.com/", "scheme"),
    ],
)
def test_refusal_names_the_category(policy: SsrfPolicy, url: str, fragment: str) -> None:
    with pytest.raises(UnsafeUrl) as caught:
        policy.check_url(url)
    assert fragment in caught.value.detail


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"],
)
def test_check_ip_accepts_public(policy: SsrfPolicy, address: str) -> None:
    policy.check_ip(ip_address(address))


def test_check_ip_message_format(policy: SsrfPolicy) -> None:
    with pytest.raises(UnsafeUrl) as caught:
        policy.check_ip(IPv4Address("127.0.0.1"))
    assert caught.value.detail == "destination resolves to 127.0.0.1, a loopback address"


def test_allow_list_lets_configured_addresses_through() -> None:
    allowing = SsrfPolicy(["127.0.0.1/32", "::1/128"])
    target = allowing.check_url("http://127.0.0.1:8080/hook")
    assert target == ParsedTarget("http", "127.0.0.1", 8080, IPv4Address("127.0.0.1"))
    assert allowing.check_url("http://[::1]/").ip == IPv6Address("::1")
    assert allowing.check_url("http://[::ffff:127.0.0.1]/").port == 80  # same destination
    with pytest.raises(UnsafeUrl):
        allowing.check_url("http://127.0.0.2/")  # outside the allowed /32
    with pytest.raises(UnsafeUrl):
        allowing.check_url("http://10.0.0.1/")
    with pytest.raises(UnsafeUrl):
        allowing.check_url("http://localhost/")  # names are refused by name regardless
    with pytest.raises(UnsafeUrl):
        SsrfPolicy().check_url("http://127.0.0.1:8080/hook")


@pytest.mark.parametrize("cidr", ["127.0.0.1/33", "not-a-cidr", "10.0.0.1/8", "::1/129", ""])
def test_invalid_allow_cidr_is_a_value_error(cidr: str) -> None:
    with pytest.raises(ValueError, match="invalid CIDR"):
        SsrfPolicy([cidr])


def test_allow_cidrs_must_not_be_a_bare_string() -> None:
    with pytest.raises(ValueError, match="sequence"):
        SsrfPolicy("127.0.0.1/32")


def test_https_only_mode() -> None:
    strict = SsrfPolicy(allow_http=False)
    assert strict.check_url("https://example.com/").scheme == "https"
    with pytest.raises(UnsafeUrl, match="https"):
        strict.check_url("http://example.com/")


async def test_resolve_localhost_is_refused(policy: SsrfPolicy) -> None:
    with pytest.raises(UnsafeUrl, match="loopback"):
        await policy.resolve("localhost", 80)


async def test_resolve_checks_literals_and_allow_list() -> None:
    assert await SsrfPolicy().resolve("93.184.216.34", 443) == [IPv4Address("93.184.216.34")]
    allowed = await SsrfPolicy(["127.0.0.0/8", "::1/128"]).resolve("localhost", 80)
    assert allowed
    assert all(address.is_loopback for address in allowed)


async def test_check_url_resolved() -> None:
    policy = SsrfPolicy()
    target = await policy.check_url_resolved("https://93.184.216.34/hook")
    assert target.ip == IPv4Address("93.184.216.34")
    with pytest.raises(UnsafeUrl):
        await policy.check_url_resolved("http://127.1/")
