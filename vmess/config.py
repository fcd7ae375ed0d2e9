"""Client configuration: the seed's ``VmessConfig`` API mapped onto the real VMess wire format.

``VmessEncryption`` names the body cipher (``.wire_code`` is the V2Ray security code, spec section 4.1);
``VmessSecurityLevel`` is a library-level preset for option bits (never on the wire, spec section 8);
``VmessConfig`` bundles a user with both and computes the ``security`` code and ``options`` bits to send.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import platform
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from .constants import Option, Security
from .errors import ConfigError

__all__ = [
    "VmessEncryption",
    "VmessSecurityLevel",
    "VmessConfig",
    "mask_user_id",
    "parse_bool",
    "parse_alter_id",
]

_AEAD_CODES = (Security.AES128_GCM, Security.CHACHA20_POLY1305)
_TRUE_WORDS = frozenset({"true", "1", "yes"})
_FALSE_WORDS = frozenset({"false", "0", "no"})
_CPUINFO_PATH = "/proc/cpuinfo"
_AES_MACHINES = frozenset({"x86_64", "amd64", "aarch64", "arm64"})


def mask_user_id(value: object) -> str:
    """Render a user ID (or something meant to be one) without revealing it, for reprs and error messages."""
    if isinstance(value, uuid.UUID):
        return f"<uuid …{value.hex[-4:]}>"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, str):
        # Show the last 4 characters only when they are a small part of the value.
        tail = f" …{value[-4:]}" if len(value) >= 16 else ""
        return f"<{len(value)} chars{tail}>"
    return f"<{type(value).__name__}>"


def _aes_from_cpuinfo(text: str) -> bool | None:
    """Whether cpuinfo text lists the 'aes' flag (x86 ``flags``, ARM ``Features``); None if it has neither line."""
    seen = False
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep or key.strip().lower() not in ("flags", "features"):
            continue
        seen = True
        if "aes" in value.split():
            return True
    return False if seen else None


@functools.cache
def _cpu_has_aes() -> bool:
    """Whether this CPU has AES instructions; read once and cached, because "auto" is resolved per connection."""
    try:
        with open(_CPUINFO_PATH, encoding="utf-8", errors="replace") as f:
            answer = _aes_from_cpuinfo(f.read())
    except OSError:
        answer = None
    if answer is not None:
        return answer
    # No /proc (macOS, Windows, sandboxes): the common 64-bit desktop/server CPUs all have AES.
    return platform.machine().lower() in _AES_MACHINES


class VmessEncryption(enum.Enum):
    """The body cipher a client asks for; the values are the names used in configs and share links."""

    AES_128_CFB = "aes-128-cfb"
    NONE = "none"
    AES_128_GCM = "aes-128-gcm"
    CHACHA20_POLY1305 = "chacha20-poly1305"
    AUTO = "auto"
    ZERO = "zero"

    @property
    def name_on_link(self) -> str:
        """The name used for this cipher in share links and V2Ray configs (``scy`` / ``encryption``)."""
        return str(self.value)

    @classmethod
    def from_name(cls, name: str) -> VmessEncryption:
        """Parse a cipher name case-insensitively; an empty string means ``AUTO`` (as in v2rayN's ``scy``)."""
        return cls._lookup(name, "encryption")

    @classmethod
    def _lookup(cls, name: object, field: str) -> VmessEncryption:
        """Parse ``name`` (a member or its link name), reporting errors under ``field``."""
        return _lookup_member(cls, name, field, "cipher")

    def resolve(self) -> VmessEncryption:
        """Replace ``AUTO`` by the cipher to use on this machine: AES-128-GCM with AES instructions, else ChaCha20."""
        if self is VmessEncryption.AUTO:
            return VmessEncryption.AES_128_GCM if _cpu_has_aes() else VmessEncryption.CHACHA20_POLY1305
        return self

    @property
    def wire_code(self) -> int:
        """The V2Ray security code sent in the request header; AUTO is resolved, ZERO travels as NONE (5)."""
        return _WIRE_CODES[self.resolve()]

    @property
    def is_aead(self) -> bool:
        """Whether the resolved cipher is AES-GCM or ChaCha20-Poly1305 (the only ones allowing option A)."""
        return self.wire_code in _AEAD_CODES


_WIRE_CODES: dict[VmessEncryption, Security] = {
    VmessEncryption.AES_128_CFB: Security.LEGACY,
    VmessEncryption.NONE: Security.NONE,
    VmessEncryption.AES_128_GCM: Security.AES128_GCM,
    VmessEncryption.CHACHA20_POLY1305: Security.CHACHA20_POLY1305,
    VmessEncryption.ZERO: Security.NONE,
}


class VmessSecurityLevel(enum.Enum):
    """The seed's security levels: a preset for the option bits, never sent on the wire nor in share links."""

    NONE = "none"
    AUTO = "auto"
    STANDARD = "standard"
    HIGH = "high"

    @classmethod
    def from_name(cls, name: str) -> VmessSecurityLevel:
        """Parse a level name case-insensitively; an empty string means ``AUTO``."""
        return cls._lookup(name, "security_level")

    @classmethod
    def _lookup(cls, name: object, field: str) -> VmessSecurityLevel:
        """Parse ``name`` (a member or its name), reporting errors under ``field``."""
        return _lookup_member(cls, name, field, "security level")


_E = TypeVar("_E", VmessEncryption, VmessSecurityLevel)


def _lookup_member(cls: type[_E], name: object, field: str, what: str) -> _E:
    """A member of ``cls`` from itself or its (case-insensitive) value; empty means AUTO; ConfigError otherwise."""
    if isinstance(name, cls):
        return name
    if not isinstance(name, str):
        raise ConfigError(field, name, f"expected a {what} name, not {type(name).__name__}")
    key = name.strip().lower()
    if not key:
        return cls.AUTO  # type: ignore[return-value]
    for member in cls:
        if member.value == key:
            return member
    valid = ", ".join(m.value for m in cls)
    raise ConfigError(field, name, f"unknown {what}; expected one of {valid}")


def parse_bool(value: object, field: str) -> bool:
    """Parse true/false/1/0/yes/no (case-insensitive; empty means False) or a bool, for link parameters."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        key = value.strip().lower()
        if key in _TRUE_WORDS:
            return True
        if key in _FALSE_WORDS or not key:
            return False
    raise ConfigError(field, value, "expected true/false, 1/0 or yes/no")


def parse_alter_id(value: object, field: str) -> int:
    """Parse an alterId given as an int or a decimal string (empty means 0); must be within 0..65535."""
    if isinstance(value, bool):
        raise ConfigError(field, value, "expected an integer 0..65535")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return 0
        if not (text.isascii() and text.isdigit()):
            raise ConfigError(field, value, "expected an integer 0..65535")
        number = int(text)
    elif isinstance(value, int):
        number = value
    else:
        raise ConfigError(field, value, "expected an integer 0..65535")
    if not 0 <= number <= 65535:
        raise ConfigError(field, value, "out of range 0..65535")
    return number


def _coerce_user_id(value: object) -> uuid.UUID:
    """Turn a UUID, its text form or its 16 raw bytes into a ``uuid.UUID``; errors never show the value."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value.strip())
        except ValueError:
            raise ConfigError("user_id", mask_user_id(value), "not a UUID") from None
    if isinstance(value, (bytes, bytearray)):
        if len(value) != 16:
            raise ConfigError("user_id", mask_user_id(value), "raw user ID must be 16 bytes")
        return uuid.UUID(bytes=bytes(value))
    raise ConfigError("user_id", mask_user_id(value), "expected a UUID, its text form or 16 bytes")


@dataclass(frozen=True, slots=True, repr=False)
class VmessConfig:
    """One VMess user plus the cipher and option-bit preset a client uses with it.

    Option bits (``options``; S=0x01 chunk stream, M=0x04 masking, P=0x08 padding, A=0x10 authenticated length),
    chosen by ``security_level`` for the resolved cipher:

    ========== ==============================================================================
    NONE       S
    STANDARD   S|M
    AUTO       what V2Ray sends: S|M|P for GCM/ChaCha, S|M for NONE, S for AES-128-CFB
    HIGH       AUTO, plus A for GCM/ChaCha
    ========== ==============================================================================

    ``test_enabled`` (V2Ray's "AuthenticatedLength" experiment) adds A for GCM/ChaCha. ``ZERO`` always gives 0
    (a raw stream sent with security NONE). Invariants: never P without M, never P with NONE, never A unless
    the cipher is GCM/ChaCha. ``alter_id > 0`` selects the legacy MD5 header, 0 the AEAD header; every cipher
    is allowed with either header, so only types and ranges are validated.
    """

    user_id: uuid.UUID
    encryption: VmessEncryption = VmessEncryption.AUTO
    alter_id: int = 0
    security_level: VmessSecurityLevel = VmessSecurityLevel.AUTO
    test_enabled: bool = False

    def __post_init__(self) -> None:
        """Validate every field, converting a text/bytes user ID and enum names to their proper types."""
        object.__setattr__(self, "user_id", _coerce_user_id(self.user_id))
        object.__setattr__(self, "encryption", VmessEncryption._lookup(self.encryption, "encryption"))
        object.__setattr__(
            self, "security_level", VmessSecurityLevel._lookup(self.security_level, "security_level")
        )
        if isinstance(self.alter_id, bool) or not isinstance(self.alter_id, int):
            raise ConfigError("alter_id", self.alter_id, "expected an integer 0..65535")
        if not 0 <= self.alter_id <= 65535:
            raise ConfigError("alter_id", self.alter_id, "out of range 0..65535")
        if not isinstance(self.test_enabled, bool):
            raise ConfigError("test_enabled", self.test_enabled, "expected a bool")

    # -- construction -------------------------------------------------------------------------------------------

    @classmethod
    def new(cls, user_id: uuid.UUID | str | bytes) -> VmessConfig:
        """A config with the defaults: AEAD header (alter_id 0), cipher AUTO, level AUTO, no experiments."""
        return cls(user_id=user_id)  # type: ignore[arg-type]  # converted in __post_init__

    def with_encryption(self, encryption: VmessEncryption | str) -> VmessConfig:
        """A copy with another cipher (a member or its link name such as ``"aes-128-gcm"``)."""
        return dataclasses.replace(self, encryption=VmessEncryption._lookup(encryption, "encryption"))

    def with_alter_id(self, alter_id: int) -> VmessConfig:
        """A copy with another alterId (0 = AEAD header, > 0 = legacy MD5 header)."""
        return dataclasses.replace(self, alter_id=alter_id)

    def with_security_level(self, level: VmessSecurityLevel | str) -> VmessConfig:
        """A copy with another option-bit preset (a member or its name such as ``"high"``)."""
        return dataclasses.replace(self, security_level=VmessSecurityLevel._lookup(level, "security_level"))

    def with_test_enabled(self, enabled: bool) -> VmessConfig:
        """A copy with the authenticated-length experiment switched on or off."""
        return dataclasses.replace(self, test_enabled=enabled)

    @classmethod
    def from_url_params(cls, user_id: uuid.UUID | str | bytes, params: Mapping[str, str]) -> VmessConfig:
        """Build a config from the seed's URL parameters: ``encryption``, ``alterId``, ``security`` (a level), ``test``.

        Unknown keys are ignored; an empty value means the default. ``security=tls|reality|xtls`` is transport
        security, which a bare config cannot carry, so it is refused (use ``vmess.links.parse_link``).
        """
        encryption = VmessEncryption._lookup(params.get("encryption", ""), "encryption")
        alter_id = parse_alter_id(params.get("alterId", ""), "alterId")
        security = params.get("security", "")
        if isinstance(security, str) and security.strip().lower() in ("tls", "reality", "xtls"):
            raise ConfigError(
                "security", security, "is transport security, not a level; parse the whole link with parse_link"
            )
        level = VmessSecurityLevel._lookup(security, "security")
        test = parse_bool(params.get("test", ""), "test")
        return cls(
            user_id=user_id,  # type: ignore[arg-type]  # converted in __post_init__
            encryption=encryption,
            alter_id=alter_id,
            security_level=level,
            test_enabled=test,
        )

    # -- what goes on the wire ----------------------------------------------------------------------------------

    @property
    def security(self) -> int:
        """The security code for the request header (AUTO resolved for this CPU, ZERO sent as NONE = 5)."""
        return self.encryption.wire_code

    @property
    def options(self) -> int:
        """The option bits for the request header, from the level/cipher table in the class docstring."""
        cipher = self.encryption
        if cipher is VmessEncryption.ZERO:
            return Option(0)
        cipher = cipher.resolve()
        aead = cipher.is_aead
        level = self.security_level
        if level is VmessSecurityLevel.NONE:
            bits = Option.CHUNK_STREAM
        elif level is VmessSecurityLevel.STANDARD:
            bits = Option.CHUNK_STREAM | Option.CHUNK_MASKING
        else:  # AUTO and HIGH start from what V2Ray itself sends
            if aead:
                bits = Option.CHUNK_STREAM | Option.CHUNK_MASKING | Option.GLOBAL_PADDING
            elif cipher is VmessEncryption.NONE:
                bits = Option.CHUNK_STREAM | Option.CHUNK_MASKING
            else:  # AES-128-CFB
                bits = Option.CHUNK_STREAM
            if level is VmessSecurityLevel.HIGH and aead:
                bits |= Option.AUTHENTICATED_LENGTH
        if self.test_enabled and aead:
            bits |= Option.AUTHENTICATED_LENGTH
        return bits

    @property
    def is_legacy(self) -> bool:
        """Whether the legacy MD5 request header is used (alterId > 0); modern servers refuse it."""
        return self.alter_id > 0

    # -- display ------------------------------------------------------------------------------------------------

    def __repr__(self) -> str:
        """Show every field except the user ID, of which only the last 4 hex digits appear."""
        return (
            f"VmessConfig(user_id={mask_user_id(self.user_id)}, encryption={self.encryption.name}, "
            f"alter_id={self.alter_id}, security_level={self.security_level.name}, "
            f"test_enabled={self.test_enabled})"
        )

    __str__ = __repr__
