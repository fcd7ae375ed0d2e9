"""Tests of vmess.links: v2rayN, VMessAEAD-URL and seed links, subscriptions, errors, and the v2rayN writer."""

from __future__ import annotations

import base64
import json
import pickle
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.provisional import domains

from vmess.config import VmessConfig, VmessEncryption, VmessSecurityLevel
from vmess.errors import ConfigError, UnsupportedError
from vmess.links import VmessLink, parse_link, parse_subscription

UID = uuid.UUID("2b1c7e5a-9f3d-4c61-8e0b-5d7a3f9c1e42")
UIDS = str(UID)

E = VmessEncryption
L = VmessSecurityLevel


def v2rayn(obj: Any, *, urlsafe: bool = False, pad: bool = True, wrap: int = 0, raw: bytes | None = None) -> str:
    """Build a v2rayN link from a JSON object the way various generators do (alphabet, padding, line wrapping)."""
    payload = raw if raw is not None else json.dumps(obj, ensure_ascii=False).encode("utf-8")
    text = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(payload).decode("ascii")
    if not pad:
        text = text.rstrip("=")
    if wrap:
        text = "\r\n".join(text[i : i + wrap] for i in range(0, len(text), wrap))
    return "vmess://" + text


def typical(**overrides: Any) -> dict[str, Any]:
    """A v2rayN JSON object shaped like real exports (ws + tls behind a CDN)."""
    obj: dict[str, Any] = {
        "v": "2",
        "ps": "🇭🇰 HK-01 | 1x",
        "add": "cdn.example.com",
        "port": "443",
        "id": UIDS,
        "aid": "0",
        "scy": "auto",
        "net": "ws",
        "type": "none",
        "host": "hk01.example.com",
        "path": "/vm?ed=2048",
        "tls": "tls",
        "sni": "hk01.example.com",
        "alpn": "h2,http/1.1",
        "fp": "chrome",
    }
    obj.update(overrides)
    return obj


def error_of(text: str) -> ConfigError:
    """Parse a link that must fail and return the ConfigError."""
    with pytest.raises(ConfigError) as info:
        parse_link(text)
    return info.value


# -- v2rayN form ----------------------------------------------------------------------------------------------------


def test_v2rayn_typical_ws_tls() -> None:
    """A typical ws+tls export: VMess fields go to the config, everything else to transport."""
    link = parse_link(v2rayn(typical()))
    assert (link.server_host, link.server_port, link.name) == ("cdn.example.com", 443, "🇭🇰 HK-01 | 1x")
    assert link.config == VmessConfig(UID)
    assert dict(link.transport) == {
        "net": "ws",
        "type": "none",
        "host": "hk01.example.com",
        "path": "/vm?ed=2048",
        "tls": "tls",
        "sni": "hk01.example.com",
        "alpn": "h2,http/1.1",
        "fp": "chrome",
    }
    assert not link.is_plain_tcp


def test_v2rayn_numbers_as_numbers() -> None:
    """port and aid may be JSON numbers (older v2rayN and many panels)."""
    link = parse_link(v2rayn(typical(port=8443, aid=64, scy="aes-128-gcm")))
    assert link.server_port == 8443
    assert link.config.alter_id == 64 and link.config.is_legacy
    assert link.config.encryption is E.AES_128_GCM


def test_v2rayn_urlsafe_without_padding() -> None:
    """The URL-safe alphabet without '=' padding decodes the same."""
    obj = typical(ps="ÿÿ>>>??? ~~~", path="/?~~>>")
    text = v2rayn(obj, urlsafe=True, pad=False)
    body = text[len("vmess://") :]
    assert ("-" in body or "_" in body) and "=" not in body
    assert parse_link(text) == parse_link(v2rayn(obj))
    assert parse_link(text).name == "ÿÿ>>>??? ~~~"


@pytest.mark.parametrize("length_fix", range(3))
def test_v2rayn_every_padding_length(length_fix: int) -> None:
    """Payloads of every length mod 3 decode with and without padding."""
    obj = typical(ps="x" * length_fix)
    assert parse_link(v2rayn(obj, pad=False)).name == "x" * length_fix
    assert parse_link(v2rayn(obj, pad=True)).name == "x" * length_fix


def test_v2rayn_crlf_wrapped_and_whitespace() -> None:
    """Base64 wrapped at 76 columns with CRLF, plus surrounding whitespace, is tolerated."""
    text = "  \r\n" + v2rayn(typical(), wrap=76) + "\r\n\t "
    assert "\r\n" in text.strip()
    assert parse_link(text) == parse_link(v2rayn(typical()))


def test_v2rayn_pretty_json_with_bom() -> None:
    """Pretty-printed JSON with a UTF-8 BOM (Windows tools) parses."""
    raw = b"\xef\xbb\xbf" + json.dumps(typical(), indent=2).encode("utf-8")
    assert parse_link(v2rayn(None, raw=raw)).server_host == "cdn.example.com"


def test_v2rayn_plain_tcp_minimal() -> None:
    """A minimal tcp link: missing scy means auto, empty values are dropped, net defaults to tcp."""
    link = parse_link(v2rayn({"v": "2", "ps": "", "add": "203.0.113.7", "port": "10086", "id": UIDS, "aid": "0",
                              "net": "tcp", "type": "none", "host": "", "path": "", "tls": ""}))
    assert link.config.encryption is E.AUTO
    assert dict(link.transport) == {"net": "tcp", "type": "none"}
    assert link.is_plain_tcp
    link.require_plain_tcp()
    bare = parse_link(v2rayn({"add": "203.0.113.7", "port": 1, "id": UIDS}))
    assert dict(bare.transport) == {"net": "tcp"} and bare.config.alter_id == 0 and bare.name == ""


@pytest.mark.parametrize(
    ("scy", "expected"),
    [("", E.AUTO), ("AUTO", E.AUTO), ("none", E.NONE), ("zero", E.ZERO), ("aes-128-cfb", E.AES_128_CFB),
     ("chacha20-poly1305", E.CHACHA20_POLY1305), (None, E.AUTO)],
)
def test_v2rayn_scy(scy: str | None, expected: VmessEncryption) -> None:
    """Every cipher name is read from scy, case-insensitively; empty or null means auto."""
    assert parse_link(v2rayn(typical(scy=scy))).config.encryption is expected


def test_v2rayn_odd_value_types() -> None:
    """Booleans, numbers, lists and nulls in transport keys become strings (or are dropped)."""
    link = parse_link(v2rayn(typical(insecure=True, alpn=["h2", "http/1.1"], sni=None, extra=3, path="")))
    assert link.transport["insecure"] == "1"
    assert link.transport["alpn"] == "h2,http/1.1"
    assert link.transport["extra"] == "3"
    assert "sni" not in link.transport and "path" not in link.transport


def test_v2rayn_ipv6_add() -> None:
    """An IPv6 address in add may come with or without brackets; it is stored without."""
    assert parse_link(v2rayn(typical(add="2001:db8::5"))).server_host == "2001:db8::5"
    assert parse_link(v2rayn(typical(add="[2001:db8::5]"))).server_host == "2001:db8::5"


def test_v2rayn_fragment_names_link_without_ps() -> None:
    """A '#name' after the payload is used only when ps is empty."""
    assert parse_link(v2rayn(typical(ps="")) + "#My%20Node").name == "My Node"
    assert parse_link(v2rayn(typical()) + "#ignored").name == "🇭🇰 HK-01 | 1x"


def test_v2rayn_percent_encoded_padding() -> None:
    """Generators that percent-encode '=' are tolerated."""
    text = v2rayn(typical(ps="ab"))
    assert text.endswith("=")
    assert parse_link(text.replace("=", "%3D")) == parse_link(text)


def test_scheme_case_insensitive() -> None:
    """VMESS:// is the same scheme."""
    text = v2rayn(typical())
    assert parse_link("VMess://" + text[len("vmess://") :]) == parse_link(text)


# -- v2rayN errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("vmess://", "link"),
        ("vmess://!!!not base64!!!", "link"),
        ("vmess://a", "link"),
        (v2rayn(None, raw=b"{not json"), "link"),
        (v2rayn(None, raw=b"\xff\xfe\xfa garbage"), "link"),
        (v2rayn([1, 2, 3]), "link"),
        (v2rayn("just a string"), "link"),
        (v2rayn(None, raw=b"aes-128-gcm:" + UIDS.encode() + b"@h.example:443"), "link"),
        (v2rayn(typical()) + "?remarks=x&tls=1", "link"),
        (v2rayn(typical(id=None)), "id"),
        (v2rayn({k: v for k, v in typical().items() if k != "id"}), "id"),
        (v2rayn(typical(id="")), "id"),
        (v2rayn(typical(id="not-a-uuid-at-all")), "id"),
        (v2rayn(typical(id=UIDS[:-2])), "id"),
        (v2rayn(typical(id=12345)), "id"),
        (v2rayn(typical(port=0)), "port"),
        (v2rayn(typical(port=70000)), "port"),
        (v2rayn(typical(port="abc")), "port"),
        (v2rayn(typical(port="-1")), "port"),
        (v2rayn(typical(port="")), "port"),
        (v2rayn(typical(port=True)), "port"),
        (v2rayn(typical(port=443.5)), "port"),
        (v2rayn({k: v for k, v in typical().items() if k != "port"}), "port"),
        (v2rayn(typical(scy="aes-256-gcm")), "scy"),
        (v2rayn(typical(scy=5)), "scy"),
        (v2rayn(typical(aid="-1")), "aid"),
        (v2rayn(typical(aid="x")), "aid"),
        (v2rayn(typical(aid=65536)), "aid"),
        (v2rayn(typical(add="")), "add"),
        (v2rayn(typical(add="bad host/name")), "add"),
        (v2rayn(typical(add="2001:db8::zz")), "add"),
        (v2rayn(typical(add=["a"])), "add"),
    ],
)
def test_v2rayn_broken(text: str, field: str) -> None:
    """Each broken v2rayN link raises ConfigError naming the field."""
    err = error_of(text)
    assert err.field == field
    assert err.reason
    assert str(err).startswith(f"{field}: ")


def test_errors_never_contain_the_user_id() -> None:
    """Errors about other fields never echo the (valid) user ID or the base64 blob."""
    for text in (v2rayn(typical(port=0)), v2rayn(typical(scy="x")), f"vmess://{UIDS}@h:0", f"vmess://{UIDS}@h:1?security=x"):
        err = error_of(text)
        assert UIDS not in str(err) and UID.hex not in str(err)


def test_bad_uuid_is_masked() -> None:
    """A bad user ID is never echoed in full, in the message or in the error's value."""
    near = UIDS[:-1] + "g"
    for text in (v2rayn(typical(id=near)), f"vmess://{near}@h.example:443"):
        err = error_of(text)
        assert err.field == "id"
        assert near not in str(err) and near not in repr(err.value)
        assert near[:12] not in str(err)


def test_long_base64_not_echoed() -> None:
    """A broken payload is truncated in the message."""
    blob = base64.b64encode(b"{" + b"x" * 3000).decode()
    err = error_of("vmess://" + blob)
    assert err.field == "link"
    assert blob not in str(err)
    assert len(str(err)) < 200


# -- URL forms ------------------------------------------------------------------------------------------------------


def test_aead_url_ws_tls_ipv6_percent_remark() -> None:
    """A VMessAEAD URL link with an IPv6 host, percent-encoded values and a UTF-8 remark."""
    text = (
        f"vmess://{UIDS}@[2001:db8:85a3::8a2e:370:7334]:2053/?type=ws&encryption=chacha20-poly1305&security=tls"
        "&host=edge.example.net&path=%2Fapi%2Fv1%3Fed%3D2048&sni=edge.example.net&alpn=h2%2Chttp%2F1.1&fp=firefox"
        "#%F0%9F%87%AF%F0%9F%87%B5%20Tokyo%20%231"
    )
    link = parse_link(text)
    assert (link.server_host, link.server_port) == ("2001:db8:85a3::8a2e:370:7334", 2053)
    assert link.name == "🇯🇵 Tokyo #1"
    assert link.config == VmessConfig(UID, E.CHACHA20_POLY1305, 0, L.AUTO, False)
    assert dict(link.transport) == {
        "net": "ws",
        "tls": "tls",
        "host": "edge.example.net",
        "path": "/api/v1?ed=2048",
        "sni": "edge.example.net",
        "alpn": "h2,http/1.1",
        "fp": "firefox",
    }
    with pytest.raises(UnsupportedError, match="transport 'ws' with tls is not implemented yet; refusing to connect"):
        link.require_plain_tcp()


def test_aead_url_plain_tcp_defaults() -> None:
    """A bare URL: encryption defaults to auto, security=none means no TLS (level stays AUTO)."""
    link = parse_link(f"vmess://{UIDS}@198.51.100.4:10086?type=tcp&security=none&headerType=none")
    assert link.config == VmessConfig(UID)
    assert link.is_plain_tcp
    assert dict(link.transport) == {"net": "tcp", "type": "none"}
    assert parse_link(f"vmess://{UIDS}@h.example:1").is_plain_tcp


def test_aead_url_plus_is_not_space() -> None:
    """encodeURIComponent never produces '+', so a literal '+' stays a plus."""
    link = parse_link(f"vmess://{UIDS}@h.example:80?type=ws&path=/a+b%20c")
    assert link.transport["path"] == "/a+b c"


def test_aead_url_grpc_reality() -> None:
    """gRPC service name and mode land in v2rayN's path/type slots; REALITY parameters are kept."""
    link = parse_link(
        f"vmess://{UIDS}@r.example:443?type=grpc&serviceName=svc&mode=multi&security=reality&pbk=KEY&sid=ab&sni=x.com"
    )
    assert link.transport["net"] == "grpc"
    assert link.transport["path"] == "svc" and link.transport["type"] == "multi"
    assert link.transport["tls"] == "reality" and link.transport["pbk"] == "KEY"
    with pytest.raises(UnsupportedError, match="transport 'grpc' with reality"):
        link.require_plain_tcp()


def test_aead_url_tcp_http_header_not_plain() -> None:
    """TCP with an HTTP camouflage header is not plain TCP either."""
    link = parse_link(f"vmess://{UIDS}@h.example:80?type=tcp&headerType=http&host=a.com")
    assert not link.is_plain_tcp
    with pytest.raises(UnsupportedError, match="header type 'http'"):
        link.require_plain_tcp()


def test_aead_url_tcp_tls_not_plain() -> None:
    """TLS alone is enough to refuse: TLS is never silently dropped."""
    link = parse_link(f"vmess://{UIDS}@h.example:443?security=tls")
    with pytest.raises(UnsupportedError, match="transport 'tcp' with tls is not implemented yet"):
        link.require_plain_tcp()


def test_seed_url_example() -> None:
    """The seed's example URL: security is a level, alterId and test are read."""
    link = parse_link(f"vmess://{UIDS}@host.example:10086?encryption=aes-128-gcm&alterId=0&security=high&test=false")
    assert link.config == VmessConfig(UID, E.AES_128_GCM, 0, L.HIGH, False)
    assert link.is_plain_tcp
    assert dict(link.transport) == {"net": "tcp"}


def test_seed_url_none_level_and_legacy() -> None:
    """With the seed's alterId/test parameters, security=none is the NONE level; alterId > 0 is legacy."""
    link = parse_link(f"vmess://{UIDS}@10.0.0.1:8080?encryption=aes-128-cfb&alterId=4&security=none&test=yes")
    assert link.config == VmessConfig(UID, E.AES_128_CFB, 4, L.NONE, True)
    assert link.config.is_legacy
    assert link.config.options == 0x01


@pytest.mark.parametrize("level", ["auto", "standard", "high", "STANDARD"])
def test_seed_url_levels_without_other_seed_params(level: str) -> None:
    """auto/standard/high are levels even without alterId/test (they are no transport security)."""
    link = parse_link(f"vmess://{UIDS}@h.example:1?security={level}")
    assert link.config.security_level is L.from_name(level)
    assert "tls" not in link.transport


def test_url_percent_encoded_user_and_host() -> None:
    """Percent-encoded user info and host are decoded."""
    link = parse_link(f"vmess://{UIDS.replace('-', '%2D')}@h%2Eexample:1")
    assert link.config.user_id == UID and link.server_host == "h.example"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (f"vmess://{UIDS}@h.example", "port"),
        (f"vmess://{UIDS}@h.example:", "port"),
        (f"vmess://{UIDS}@h.example:0", "port"),
        (f"vmess://{UIDS}@h.example:65536", "port"),
        (f"vmess://{UIDS}@h.example:https", "port"),
        (f"vmess://{UIDS}@[2001:db8::1]", "port"),
        (f"vmess://{UIDS}@2001:db8::1:443", "add"),
        (f"vmess://{UIDS}@[2001:db8::1:443", "add"),
        (f"vmess://{UIDS}@[2001:db8::1]x:443", "add"),
        (f"vmess://{UIDS}@[zz::1]:443", "add"),
        (f"vmess://{UIDS}@:443", "add"),
        (f"vmess://not-a-uuid@h.example:443", "id"),
        (f"vmess://@h.example:443", "id"),
        (f"vmess://{UIDS}@h.example:443?encryption=aes-256-gcm", "encryption"),
        (f"vmess://{UIDS}@h.example:443?security=ultra", "security"),
        (f"vmess://{UIDS}@h.example:443?alterId=x", "alterId"),
        (f"vmess://{UIDS}@h.example:443?test=perhaps", "test"),
        ("ss://YWVzLTEyOC1nY206cGFzcw@h.example:8388#x", "link"),
        ("vless://" + UIDS + "@h.example:443", "link"),
        ("just some text", "link"),
        ("", "link"),
    ],
)
def test_url_broken(text: str, field: str) -> None:
    """Each broken URL link raises ConfigError naming the field."""
    err = error_of(text)
    assert err.field == field
    assert UIDS not in str(err)


def test_non_string_input() -> None:
    """Bytes or None are a ConfigError on link."""
    for bad in (b"vmess://x", None):
        with pytest.raises(ConfigError) as info:
            parse_link(bad)  # type: ignore[arg-type]
        assert info.value.field == "link"


# -- VmessLink ------------------------------------------------------------------------------------------------------


def test_link_constructor_normalises() -> None:
    """Brackets are stripped from IPv6, empty transport values dropped, net defaulted, mapping made read-only."""
    link = VmessLink("[::1]", 443, VmessConfig(UID), "n", {"path": "", "sni": " s.example "})
    assert link.server_host == "::1"
    assert dict(link.transport) == {"net": "tcp", "sni": "s.example"}
    with pytest.raises(TypeError):
        link.transport["net"] = "ws"  # type: ignore[index]
    assert hash(link) == hash(VmessLink("::1", 443, VmessConfig(UID), "n", {"sni": "s.example", "net": "tcp"}))
    assert pickle.loads(pickle.dumps(link)) == link


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"server_host": ""}, "server_host"),
        ({"server_host": "a b"}, "server_host"),
        ({"server_host": "[host]"}, "server_host"),
        ({"server_host": 5}, "server_host"),
        ({"server_port": 0}, "server_port"),
        ({"server_port": 65536}, "server_port"),
        ({"server_port": "x"}, "server_port"),
        ({"config": "cfg"}, "config"),
        ({"name": None}, "name"),
        ({"transport": {"id": "x"}}, "transport"),
        ({"transport": {"net": 1}}, "transport"),
        ({"transport": [("net", "ws")]}, "transport"),
    ],
)
def test_link_constructor_validates(kwargs: dict[str, Any], field: str) -> None:
    """Bad constructor arguments raise ConfigError naming the field."""
    args: dict[str, Any] = {"server_host": "h.example", "server_port": 1, "config": VmessConfig(UID)}
    args.update(kwargs)
    with pytest.raises(ConfigError) as info:
        VmessLink(**args)
    assert info.value.field == field


def test_link_repr_hides_user_id() -> None:
    """A link's repr shows the masked config only."""
    link = parse_link(v2rayn(typical()))
    assert UIDS not in repr(link) and UIDS not in str(link)
    assert "…1e42" in repr(link)


@pytest.mark.parametrize(
    ("transport", "plain"),
    [
        ({}, True),
        ({"net": "raw"}, True),
        ({"net": "TCP", "tls": "none", "type": "none"}, True),
        ({"net": "tcp", "host": "x", "path": "/y", "sni": "z"}, True),
        ({"net": "ws"}, False),
        ({"net": "tcp", "tls": "tls"}, False),
        ({"tls": "reality"}, False),
        ({"tls": "xtls"}, False),
        ({"net": "kcp"}, False),
        ({"type": "http"}, False),
    ],
)
def test_is_plain_tcp(transport: dict[str, str], plain: bool) -> None:
    """Plain TCP means net tcp/raw, no transport security, no camouflage header."""
    link = VmessLink("h.example", 1, VmessConfig(UID), transport=transport)
    assert link.is_plain_tcp is plain
    if plain:
        link.require_plain_tcp()
    else:
        with pytest.raises(UnsupportedError, match="refusing to connect without it"):
            link.require_plain_tcp()


def test_to_v2rayn_shape() -> None:
    """The writer emits standard base64 of JSON with v2rayN's keys, numbers as strings."""
    link = VmessLink("h.example", 8443, VmessConfig(UID, E.AES_128_GCM, 2), "名前", {"net": "ws", "path": "/p", "x": "y"})
    text = link.to_v2rayn()
    assert text.startswith("vmess://")
    obj = json.loads(base64.b64decode(text[len("vmess://") :], validate=True))
    assert list(obj)[:15] == ["v", "ps", "add", "port", "id", "aid", "scy", "net", "type", "host", "path", "tls",
                              "sni", "alpn", "fp"]
    assert obj["v"] == "2" and obj["ps"] == "名前" and obj["port"] == "8443" and obj["aid"] == "2"
    assert obj["id"] == UIDS and obj["scy"] == "aes-128-gcm" and obj["net"] == "ws" and obj["x"] == "y"
    assert obj["tls"] == "" and obj["type"] == ""
    assert parse_link(text) == link


def test_to_v2rayn_drops_level_and_test() -> None:
    """Levels and the test switch are library presets and never appear in share links."""
    link = parse_link(f"vmess://{UIDS}@h.example:1?security=high&test=true&alterId=0")
    back = parse_link(link.to_v2rayn())
    assert back.config == VmessConfig(UID)
    assert "high" not in base64.b64decode(link.to_v2rayn()[8:]).decode()


def test_url_form_converts_to_v2rayn() -> None:
    """A URL link written as v2rayN and read back keeps its server, config, name and transport."""
    link = parse_link(f"vmess://{UIDS}@[2001:db8::2]:443?type=grpc&serviceName=s&security=tls&sni=a.b#n%20m")
    assert parse_link(link.to_v2rayn()) == link


# -- properties -----------------------------------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
_hosts = st.one_of(
    domains(),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
_transport = st.dictionaries(
    st.sampled_from(["net", "type", "host", "path", "tls", "sni", "alpn", "fp", "insecure", "pbk", "serviceName"]),
    _text,
    max_size=8,
)


@st.composite
def links(draw: st.DrawFn) -> VmessLink:
    """Random links whose config is representable in v2rayN form (default level, no test switch)."""
    config = VmessConfig(draw(st.uuids()), draw(st.sampled_from(list(E))), draw(st.integers(0, 65535)))
    return VmessLink(draw(_hosts), draw(st.integers(1, 65535)), config, draw(_text), draw(_transport))


@given(links())
def test_v2rayn_round_trip(link: VmessLink) -> None:
    """parse_link(link.to_v2rayn()) == link for every representable link."""
    assert parse_link(link.to_v2rayn()) == link


@given(links(), st.booleans(), st.booleans())
def test_v2rayn_round_trip_any_alphabet(link: VmessLink, urlsafe: bool, pad: bool) -> None:
    """Re-encoding the payload in the other alphabet or without padding reads the same link."""
    raw = base64.b64decode(link.to_v2rayn()[len("vmess://") :])
    assert parse_link(v2rayn(None, raw=raw, urlsafe=urlsafe, pad=pad, wrap=64)) == link


@settings(max_examples=300)
@given(st.text(max_size=120))
def test_parse_link_only_raises_config_error(tail: str) -> None:
    """Arbitrary text after the scheme either parses or raises ConfigError, never anything else."""
    try:
        parse_link("vmess://" + tail)
    except ConfigError:
        pass


@given(st.dictionaries(st.sampled_from(["add", "port", "id", "aid", "scy", "ps", "net", "tls"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _text,
                                 st.lists(st.integers(), max_size=2)),
                       max_size=8))
def test_parse_json_fuzz_only_raises_config_error(obj: dict[str, Any]) -> None:
    """Arbitrary JSON field types either parse or raise ConfigError."""
    try:
        parse_link(v2rayn(obj))
    except ConfigError:
        pass


# -- subscriptions --------------------------------------------------------------------------------------------------


def _subscription_lines() -> list[str]:
    """A realistic mixed subscription body."""
    return [
        v2rayn(typical(ps="one")),
        "",
        f"vmess://{UIDS}@[2001:db8::3]:443?type=ws&security=tls#two",
        "vless://" + UIDS + "@h.example:443?encryption=none#vless",
        "ss://YWVzLTEyOC1nY206cGFzcw@h.example:8388#ss",
        "garbage line",
        v2rayn(typical(port=0)),
        v2rayn(typical(ps="three"), urlsafe=True, pad=False),
    ]


def test_subscription_base64() -> None:
    """Base64 of newline-separated links: good links parsed, bad and foreign lines reported with line numbers."""
    body = base64.b64encode("\n".join(_subscription_lines()).encode()).decode()
    found, problems = parse_subscription(body)
    assert [link.name for link in found] == ["one", "two", "three"]
    assert [number for number, _ in problems] == [4, 5, 6, 7]
    reasons = dict(problems)
    assert "vless" in reasons[4] and "skipped" in reasons[4]
    assert "ss" in reasons[5] and "skipped" in reasons[5]
    assert reasons[6] == "not a link"
    assert reasons[7].startswith("port:")
    assert all(UIDS not in reason for reason in reasons.values())


def test_subscription_plain_text_crlf() -> None:
    """A plain-text subscription with CRLF line ends works the same."""
    found, problems = parse_subscription("\r\n".join(_subscription_lines()) + "\r\n")
    assert len(found) == 3 and len(problems) == 4


def test_subscription_urlsafe_unpadded_wrapped_bytes() -> None:
    """URL-safe, unpadded, CRLF-wrapped base64 given as bytes is accepted."""
    body = base64.urlsafe_b64encode("\r\n".join(_subscription_lines()).encode()).decode().rstrip("=")
    wrapped = "\r\n".join(body[i : i + 76] for i in range(0, len(body), 76))
    found, problems = parse_subscription(wrapped.encode())
    assert len(found) == 3 and len(problems) == 4


def test_subscription_empty_and_junk() -> None:
    """An empty subscription gives nothing; junk is reported, never raised."""
    assert parse_subscription("") == ([], [])
    found, problems = parse_subscription("%%% not base64 %%%")
    assert found == [] and problems == [(1, "not a link")]
