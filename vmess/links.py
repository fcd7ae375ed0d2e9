"""Share links (spec section 9): parse ``vmess://`` links and subscriptions into ``VmessLink``, write the v2rayN form.

Three link shapes are read: v2rayN's ``vmess://base64(JSON)``, the VMessAEAD URL ``vmess://uuid@host:port?...#name``
and the seed's URL (same shape; ``security`` may be a level, plus ``alterId`` and ``test``). Transport settings
are kept as opaque strings under v2rayN's key names, and a client that cannot honour them refuses to connect.
Errors are ``ConfigError``s that never contain a full user ID or a whole base64 payload.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from .config import VmessConfig, VmessEncryption, mask_user_id, parse_alter_id
from .errors import ConfigError, UnsupportedError

__all__ = ["VmessLink", "TransportOptions", "parse_link", "parse_subscription"]

SCHEME = "vmess://"

_VMESS_KEYS = frozenset({"v", "ps", "add", "port", "id", "aid", "scy"})
"""v2rayN JSON keys that belong to the VMess layer (or the link itself); everything else is transport."""

_V2RAYN_TRANSPORT_ORDER = ("net", "type", "host", "path", "tls", "sni", "alpn", "fp")
"""Transport keys that ``to_v2rayn`` always writes, in v2rayN's order (empty when unset)."""

_URL_VMESS_PARAMS = frozenset({"encryption", "alterId", "test", "security"})
"""URL query parameters read by the VMess layer; ``security`` is split between level and transport."""

_TRANSPORT_SECURITY = frozenset({"tls", "reality", "xtls"})
_LEVEL_WORDS = frozenset({"auto", "standard", "high"})
_PLAIN_NETS = frozenset({"", "tcp", "raw"})
_NO_WORDS = frozenset({"", "none"})
_V2RAYN_SLOTS: dict[str, tuple[tuple[str, str], ...]] = {
    "grpc": (("serviceName", "path"), ("mode", "type")),
    "quic": (("key", "path"), ("quicSecurity", "host")),
    "kcp": (("seed", "path"),),
}
"""URL parameters that v2rayN stores in its generic ``path``/``type``/``host`` slots, per network."""
_BASE64_CHARS = re.compile(r"[A-Za-z0-9+/]*")
_BAD_HOST_CHARS = re.compile(r"[\s/?#@\[\]\\%\x00-\x1f\x7f]")
_UUID_LIKE = re.compile(r"(?:[0-9a-fA-F]{4,}-){2,}[0-9a-fA-F]{4,}|[0-9a-fA-F]{16,}")
"""A UUID, with or without dashes, or a long part of one (a corrupted paste can break its first digits)."""


def _truncate(text: str, limit: int = 16) -> str:
    """Shorten text for an error message so a long blob is never echoed whole."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…({len(text)} chars)"


def _redact_link(text: str) -> str:
    """A short, safe rendering of a whole link: any user-info part is masked and the rest truncated."""
    head, sep, rest = text.strip().partition("://")
    if not sep:
        head, rest = "", head
    if "@" not in rest.partition("#")[0]:
        return _truncate(head + sep + rest)
    userinfo, _, tail = rest.partition("@")
    return _truncate(f"{head}{sep}{mask_user_id(userinfo)}@{tail}", 64)


class TransportOptions(Mapping[str, str]):
    """A read-only, hashable mapping of transport settings (net, type, host, path, tls, sni, alpn, fp, ...)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, str] | None = None) -> None:
        """Copy ``data``; keys and values must be strings."""
        self._data: dict[str, str] = dict(data or {})

    def __getitem__(self, key: str) -> str:
        """The value of one setting."""
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        """Iterate over the setting names."""
        return iter(self._data)

    def __len__(self) -> int:
        """How many settings there are."""
        return len(self._data)

    def __hash__(self) -> int:
        """Hash by content, so that a frozen ``VmessLink`` is hashable."""
        return hash(frozenset(self._data.items()))

    def __eq__(self, other: object) -> bool:
        """Equal to any mapping with the same items."""
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        """Show the settings like a dict."""
        return f"TransportOptions({self._data!r})"

    def __getstate__(self) -> dict[str, str]:
        """Pickle support for the slotted class."""
        return self._data

    def __setstate__(self, state: dict[str, str]) -> None:
        """Pickle support for the slotted class."""
        self._data = dict(state)


def _check_host(value: object, field_name: str) -> str:
    """Validate a server address (domain, IPv4 or IPv6, brackets allowed); returns it without brackets."""
    if not isinstance(value, str):
        raise ConfigError(field_name, value, "expected a host name or IP address")
    host = value.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise ConfigError(field_name, value, "brackets are only for IPv6 addresses")
    if not host:
        raise ConfigError(field_name, value, "missing server address")
    if len(host) > 255:
        raise ConfigError(field_name, _truncate(value, 40), "server address too long")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(field_name, value, "not a valid IPv6 address") from None
        return host
    if _BAD_HOST_CHARS.search(host):
        raise ConfigError(field_name, value, "invalid character in server address")
    return host


def _check_port(value: object, field_name: str) -> int:
    """Validate a port given as an int, an integral float or a decimal string; must be within 1..65535."""
    if isinstance(value, bool):
        raise ConfigError(field_name, value, "expected a port number 1..65535")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit()):
            raise ConfigError(field_name, value, "expected a port number 1..65535")
        number = int(text)
    elif isinstance(value, int):
        number = value
    else:
        raise ConfigError(field_name, value, "expected a port number 1..65535")
    if not 1 <= number <= 65535:
        raise ConfigError(field_name, value, "port out of range 1..65535")
    return number


def _normalise_transport(transport: Mapping[str, str]) -> TransportOptions:
    """Strip keys and values, drop empty ones, default ``net`` to tcp, and refuse VMess-layer keys."""
    if not isinstance(transport, Mapping):
        raise ConfigError("transport", type(transport).__name__, "expected a mapping of strings")
    clean: dict[str, str] = {}
    for key, value in transport.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError("transport", key, "keys and values must be strings")
        key, value = key.strip(), value.strip()
        if not key or not value:
            continue
        if key in _VMESS_KEYS:
            raise ConfigError("transport", key, "is a VMess-layer key, not a transport setting")
        clean[key] = value
    clean.setdefault("net", "tcp")
    return TransportOptions(clean)


@dataclass(frozen=True, slots=True)
class VmessLink:
    """A parsed share link: where the server is, the VMess config, a display name and opaque transport settings.

    ``transport`` uses v2rayN's key names (``net``, ``type`` = header type, ``host``, ``path``, ``tls``, ``sni``,
    ``alpn``, ``fp``, ``insecure`` ...); empty values are dropped and ``net`` defaults to ``tcp``.
    """

    server_host: str
    server_port: int
    config: VmessConfig
    name: str = ""
    transport: Mapping[str, str] = field(default_factory=TransportOptions)

    def __post_init__(self) -> None:
        """Validate the address, port, config and name; freeze and normalise the transport settings."""
        object.__setattr__(self, "server_host", _check_host(self.server_host, "server_host"))
        object.__setattr__(self, "server_port", _check_port(self.server_port, "server_port"))
        if not isinstance(self.config, VmessConfig):
            raise ConfigError("config", type(self.config).__name__, "expected a VmessConfig")
        if not isinstance(self.name, str):
            raise ConfigError("name", self.name, "expected a string")
        object.__setattr__(self, "transport", _normalise_transport(self.transport))

    @property
    def network(self) -> str:
        """The transport network (``tcp``, ``ws``, ``grpc`` ...)."""
        return self.transport.get("net", "tcp")

    @property
    def transport_security(self) -> str:
        """The transport security (``tls``, ``reality`` ...), or ``""`` for none."""
        value = self.transport.get("tls", "")
        return "" if value.lower() in _NO_WORDS else value

    @property
    def is_plain_tcp(self) -> bool:
        """Whether the link needs nothing but a plain TCP connection (no TLS/REALITY, no WS/gRPC, no HTTP header)."""
        return (
            self.network.lower() in _PLAIN_NETS
            and not self.transport_security
            and self.transport.get("type", "").lower() in _NO_WORDS
        )

    def require_plain_tcp(self) -> None:
        """Raise ``UnsupportedError`` unless the link is plain TCP, so TLS or WebSocket is never silently dropped."""
        if self.is_plain_tcp:
            return
        parts = [f"transport '{self.network}'"]
        if self.transport_security:
            parts.append(f"with {self.transport_security}")
        header = self.transport.get("type", "")
        if header.lower() not in _NO_WORDS:
            parts.append(f"with header type '{header}'")
        raise UnsupportedError(f"{' '.join(parts)} is not implemented yet; refusing to connect without it")

    def to_v2rayn(self) -> str:
        """Write the v2rayN ``vmess://base64(JSON)`` link; the security level and test switch are not representable."""
        obj: dict[str, str] = {
            "v": "2",
            "ps": self.name,
            "add": self.server_host,
            "port": str(self.server_port),
            "id": str(self.config.user_id),
            "aid": str(self.config.alter_id),
            "scy": self.config.encryption.name_on_link,
        }
        for key in _V2RAYN_TRANSPORT_ORDER:
            obj[key] = self.transport.get(key, "")
        for key in sorted(self.transport):
            obj.setdefault(key, self.transport[key])
        payload = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return SCHEME + base64.b64encode(payload).decode("ascii")

    def __repr__(self) -> str:
        """Show the link without the user ID (the config masks it)."""
        return (
            f"VmessLink(server_host={self.server_host!r}, server_port={self.server_port}, config={self.config!r}, "
            f"name={self.name!r}, transport={dict(self.transport)!r})"
        )


# -- v2rayN form ----------------------------------------------------------------------------------------------------


def _decode_base64(blob: str) -> bytes:
    """Decode base64 in either alphabet, with or without padding, ignoring whitespace; raises ConfigError."""
    compact = "".join(blob.split())
    if "%" in compact:  # some generators percent-encode the padding or the whole payload
        compact = "".join(unquote(compact).split())
    compact = compact.rstrip("=").replace("-", "+").replace("_", "/")
    if not compact:
        raise ConfigError("link", SCHEME, "empty payload")
    if not _BASE64_CHARS.fullmatch(compact) or len(compact) % 4 == 1:
        raise ConfigError("link", _truncate(blob), "payload is not base64")
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("link", _truncate(blob), "payload is not base64") from None


def _transport_value(value: Any) -> str | None:
    """Render one JSON transport value as a string (bools as 1/0, lists joined by commas); None drops it."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float, str)):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return ",".join(str(v) for v in value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _parse_v2rayn(blob: str, query: str, fragment: str) -> VmessLink:
    """Parse the base64(JSON) part of a v2rayN link; ``fragment`` names the link when ``ps`` is absent.

    A query after the payload is refused rather than ignored: it could carry TLS or transport settings.
    """
    raw = _decode_base64(blob)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError("link", _truncate(blob), "payload is not UTF-8 text") from None
    if re.fullmatch(r"\s*[\w-]+:[^@]*@[^@]+:\d+\s*", text):
        raise ConfigError("link", _truncate(blob), "Shadowrocket-style link (cipher:id@host:port) is not supported")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise ConfigError("link", _truncate(blob), "payload is not JSON") from None
    if not isinstance(obj, dict):
        raise ConfigError("link", _truncate(blob), "payload is not a JSON object")
    if query.strip():
        raise ConfigError("link", _truncate(query), "unexpected query after the base64 payload")

    if obj.get("id") in (None, ""):
        raise ConfigError("id", None, "missing user ID")
    user_id = obj["id"]
    try:
        parsed_id = uuid.UUID(user_id.strip()) if isinstance(user_id, str) else None
    except ValueError:
        parsed_id = None
    if parsed_id is None:
        raise ConfigError("id", mask_user_id(user_id), "not a UUID")
    if obj.get("add") in (None, ""):
        raise ConfigError("add", None, "missing server address")
    host = _check_host(obj["add"], "add")
    if obj.get("port") in (None, ""):
        raise ConfigError("port", None, "missing port")
    port = _check_port(obj["port"], "port")
    aid = obj.get("aid", 0)
    if isinstance(aid, float) and aid.is_integer():
        aid = int(aid)
    alter_id = parse_alter_id("" if aid is None else aid, "aid")
    scy = obj.get("scy")
    encryption = VmessEncryption._lookup("" if scy is None else scy, "scy")
    name = obj.get("ps")
    name = fragment if name in (None, "") else str(name)

    transport: dict[str, str] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or key in _VMESS_KEYS:
            continue
        rendered = _transport_value(value)
        if rendered is not None:
            transport[key] = rendered
    config = VmessConfig(user_id=parsed_id, encryption=encryption, alter_id=alter_id)
    return VmessLink(server_host=host, server_port=port, config=config, name=name, transport=transport)


# -- URL forms ------------------------------------------------------------------------------------------------------


def _query_pairs(query: str) -> dict[str, str]:
    """Split a query string into percent-decoded pairs; ``+`` stays a plus (values are encodeURIComponent'd)."""
    pairs: dict[str, str] = {}
    for item in query.split("&"):
        if not item:
            continue
        key, _, value = item.partition("=")
        pairs[unquote(key)] = unquote(value)
    return pairs


def _split_hostport(hostport: str) -> tuple[str, str]:
    """Split ``host:port`` or ``[v6]:port`` into its two parts (still undecoded)."""
    if hostport.startswith("["):
        close = hostport.find("]")
        if close < 0:
            raise ConfigError("add", hostport, "unclosed '[' in IPv6 address")
        host, rest = hostport[: close + 1], hostport[close + 1 :]
        if not rest:
            raise ConfigError("port", None, "missing port")
        if not rest.startswith(":"):
            raise ConfigError("add", hostport, "unexpected text after IPv6 address")
        return host, rest[1:]
    host, sep, port = hostport.rpartition(":")
    if not sep:
        raise ConfigError("port", None, "missing port")
    if ":" in host:
        raise ConfigError("add", host, "IPv6 addresses must be in brackets")
    return host, port


def _url_transport(params: Mapping[str, str]) -> dict[str, str]:
    """Map URL-form transport parameters onto v2rayN's key names; others are kept under their own names."""
    transport: dict[str, str] = {}
    for key, value in params.items():
        if key in _URL_VMESS_PARAMS or key in _VMESS_KEYS or not value:
            continue
        if key == "type":
            transport["net"] = value
        elif key == "headerType":
            transport.setdefault("type", value)
        else:
            transport[key] = value
    net = transport.get("net", "").lower()
    # v2rayN keeps these in its generic slots (spec 9.1): gRPC service/mode, QUIC key/security, KCP seed.
    moves = _V2RAYN_SLOTS.get(net, ())
    for source, target in moves:
        if source in transport and target not in transport:
            transport[target] = transport.pop(source)
    return transport


def _parse_url(rest: str) -> VmessLink:
    """Parse ``uuid@host:port[/]?query#name`` (VMessAEAD proposal or the seed's form); a path is ignored."""
    rest, _, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    userinfo, _, after = rest.partition("@")
    hostport = after.split("/", 1)[0]
    user_text = unquote(userinfo)
    try:
        user_id = uuid.UUID(user_text.strip())
    except ValueError:
        raise ConfigError("id", mask_user_id(user_text), "not a UUID") from None
    host_text, port_text = _split_hostport(hostport)
    host = _check_host(unquote(host_text), "add")
    if not port_text:
        raise ConfigError("port", None, "missing port")
    port = _check_port(port_text, "port")

    params = _query_pairs(query)
    vmess_params: dict[str, str] = {key: params[key] for key in ("encryption", "alterId", "test") if key in params}
    security = params.get("security", "").strip()
    seed_form = "alterId" in params or "test" in params
    transport = _url_transport(params)
    lowered = security.lower()
    if lowered in _TRANSPORT_SECURITY:
        transport["tls"] = security
    elif lowered in _LEVEL_WORDS or (lowered == "none" and seed_form):
        vmess_params["security"] = security
    elif lowered not in ("", "none"):
        raise ConfigError(
            "security", security, "expected transport security (none|tls|reality|xtls) or a level (auto|standard|high)"
        )
    config = VmessConfig.from_url_params(user_id, vmess_params)
    name = unquote(fragment, errors="replace")
    return VmessLink(server_host=host, server_port=port, config=config, name=name, transport=transport)


# -- public entry points --------------------------------------------------------------------------------------------


def parse_link(text: str) -> VmessLink:
    """Parse one ``vmess://`` share link of any supported shape; raises ``ConfigError`` naming the bad field.

    A ``@`` before any ``#`` selects the URL forms (base64 never contains ``@``); otherwise it is v2rayN's JSON form.
    In a URL, ``security=tls|reality|xtls`` is transport security; ``auto|standard|high`` is the seed's level, and so
    is ``none`` when the link also has the seed's ``alterId`` or ``test`` parameter (else it means "no TLS").
    """
    try:
        return _parse_link(text)
    except ConfigError as exc:
        raise _scrub_user_ids(exc) from None


def _scrub_user_ids(exc: ConfigError) -> ConfigError:
    """``exc`` with anything shaped like a UUID (or a long part of one) masked: a mangled link (a doubled paste, a
    stray ``://``) can put its user ID into the field an error message echoes; the specific checks mask the ID
    field, this catches the rest.
    """
    if not _UUID_LIKE.search(str(exc)):
        return exc
    value = exc.value
    if _UUID_LIKE.search(repr(value)):
        value = _UUID_LIKE.sub("<uuid>", value if isinstance(value, str) else repr(value))
    return ConfigError(exc.field, value, _UUID_LIKE.sub("<uuid>", exc.reason))


def _parse_link(text: str) -> VmessLink:
    if not isinstance(text, str):
        raise ConfigError("link", type(text).__name__, "expected a string")
    stripped = text.strip().lstrip("\ufeff").strip()
    scheme, sep, rest = stripped.partition("://")
    if not sep:
        raise ConfigError("link", _redact_link(stripped), "not a vmess:// link")
    if scheme.lower() != "vmess":
        reason = f"scheme {_truncate(scheme.lower(), 12)!r} is not vmess"  # a long "scheme" is a mangled link
        raise ConfigError("link", f"{_truncate(scheme, 12)}://…", reason)
    before_fragment, _, fragment = rest.partition("#")
    if "@" in before_fragment:
        return _parse_url(rest)
    blob, _, query = before_fragment.partition("?")
    return _parse_v2rayn(blob, query, unquote(fragment, errors="replace"))


def _subscription_lines(text: str) -> list[str]:
    """The lines of a subscription: base64-decoded when the whole body is base64, else taken as they are."""
    body = text.strip().lstrip("\ufeff")
    if "://" not in body:
        try:
            return _decode_base64(body).decode("utf-8-sig").splitlines()
        except (ConfigError, UnicodeDecodeError):
            pass
    return body.splitlines()


def parse_subscription(text: str | bytes) -> tuple[list[VmessLink], list[tuple[int, str]]]:
    """Parse a subscription (base64 of newline-separated links, or plain lines) into links and per-line problems.

    Problems are ``(line_number, reason)`` with 1-based line numbers; bad lines and other schemes never abort.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8-sig", errors="replace")
    links: list[VmessLink] = []
    problems: list[tuple[int, str]] = []
    for number, line in enumerate(_subscription_lines(text), start=1):
        line = line.strip()
        if not line:
            continue
        scheme, sep, _ = line.partition("://")
        if not sep:
            problems.append((number, "not a link"))
            continue
        if scheme.lower() != "vmess":
            problems.append((number, f"skipped: scheme {_truncate(scheme.lower(), 12)!r} is not vmess"))
            continue
        try:
            links.append(parse_link(line))
        except ConfigError as exc:
            problems.append((number, str(exc)))
    return links, problems
