"""Tests of vmess.config: cipher and level names, wire codes, the option-bit table, and VmessConfig validation."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

import vmess.config as config_module
from vmess.config import VmessConfig, VmessEncryption, VmessSecurityLevel
from vmess.errors import ConfigError

UID = uuid.UUID("b831381d-6324-4d53-ad4f-8cda48b30811")
S, M, P, A = 0x01, 0x04, 0x08, 0x10

E = VmessEncryption
L = VmessSecurityLevel


@pytest.fixture
def aes_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the CPU has AES instructions, so AUTO resolves to AES-128-GCM."""
    monkeypatch.setattr(config_module, "_cpu_has_aes", lambda: True)


@pytest.fixture
def no_aes_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the CPU lacks AES instructions, so AUTO resolves to ChaCha20-Poly1305."""
    monkeypatch.setattr(config_module, "_cpu_has_aes", lambda: False)


# -- VmessEncryption ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("member", "name"),
    [
        (E.AES_128_CFB, "aes-128-cfb"),
        (E.NONE, "none"),
        (E.AES_128_GCM, "aes-128-gcm"),
        (E.CHACHA20_POLY1305, "chacha20-poly1305"),
        (E.AUTO, "auto"),
        (E.ZERO, "zero"),
    ],
)
def test_encryption_names_round_trip(member: VmessEncryption, name: str) -> None:
    """Every cipher has its link name, and from_name reads it back in any case with surrounding spaces."""
    assert member.name_on_link == name
    assert E.from_name(name) is member
    assert E.from_name(f"  {name.upper()}\t") is member


def test_encryption_empty_name_is_auto() -> None:
    """An empty or blank name means auto, as an empty v2rayN ``scy`` does."""
    assert E.from_name("") is E.AUTO
    assert E.from_name("   ") is E.AUTO


@pytest.mark.parametrize("bad", ["legacy", "aes-256-gcm", "chacha20", "aes128gcm", "2"])
def test_encryption_unknown_name(bad: str) -> None:
    """Unknown names (including the proto name 'legacy') raise ConfigError listing the valid names."""
    with pytest.raises(ConfigError) as info:
        E.from_name(bad)
    assert info.value.field == "encryption"
    assert info.value.value == bad
    assert "aes-128-gcm" in info.value.reason and "chacha20-poly1305" in info.value.reason


def test_encryption_from_name_rejects_non_string() -> None:
    """A non-string name is a ConfigError, not an AttributeError."""
    with pytest.raises(ConfigError):
        E.from_name(3)  # type: ignore[arg-type]


def test_resolve_auto_with_aes(aes_cpu: None) -> None:
    """AUTO becomes AES-128-GCM on a CPU with AES instructions; others stay as they are."""
    assert E.AUTO.resolve() is E.AES_128_GCM
    for member in (E.AES_128_CFB, E.NONE, E.AES_128_GCM, E.CHACHA20_POLY1305, E.ZERO):
        assert member.resolve() is member


def test_resolve_auto_without_aes(no_aes_cpu: None) -> None:
    """AUTO becomes ChaCha20-Poly1305 on a CPU without AES instructions."""
    assert E.AUTO.resolve() is E.CHACHA20_POLY1305
    assert E.AUTO.wire_code == 4


@pytest.mark.parametrize(
    ("member", "code"),
    [(E.AES_128_CFB, 1), (E.AES_128_GCM, 3), (E.CHACHA20_POLY1305, 4), (E.NONE, 5), (E.ZERO, 5), (E.AUTO, 3)],
)
def test_wire_codes(aes_cpu: None, member: VmessEncryption, code: int) -> None:
    """Wire codes are V2Ray's SecurityType values; ZERO travels as NONE and AUTO as the resolved cipher."""
    assert member.wire_code == code
    assert member.wire_code not in (0, 2, 6)


def test_aes_from_cpuinfo_x86() -> None:
    """The x86 'flags' line is searched for the whole word 'aes'."""
    text = "processor\t: 0\nflags\t\t: fpu sse2 aes pclmulqdq avx\n"
    assert config_module._aes_from_cpuinfo(text) is True
    assert config_module._aes_from_cpuinfo("flags\t\t: fpu sse2 vaes_like avx\n") is False


def test_aes_from_cpuinfo_arm() -> None:
    """The aarch64 'Features' line is searched too."""
    assert config_module._aes_from_cpuinfo("Features\t: fp asimd aes pmull sha1\n") is True
    assert config_module._aes_from_cpuinfo("Features\t: fp asimd evtstrm\n") is False


def test_aes_from_cpuinfo_unknown() -> None:
    """Without a flags/Features line the answer is unknown (None), so the caller falls back."""
    assert config_module._aes_from_cpuinfo("processor : 0\nmodel name : something\n") is None
    assert config_module._aes_from_cpuinfo("") is None


@pytest.mark.parametrize(("machine", "expected"), [("x86_64", True), ("AMD64", True), ("arm64", True), ("riscv64", False)])
def test_cpu_has_aes_falls_back_to_machine(monkeypatch: pytest.MonkeyPatch, machine: str, expected: bool) -> None:
    """Without a readable /proc/cpuinfo the machine name decides; the answer is cached."""
    monkeypatch.setattr(config_module, "_CPUINFO_PATH", "/nonexistent/cpuinfo")
    monkeypatch.setattr(config_module.platform, "machine", lambda: machine)
    config_module._cpu_has_aes.cache_clear()
    try:
        assert config_module._cpu_has_aes() is expected
        monkeypatch.setattr(config_module.platform, "machine", lambda: "unrelated")
        assert config_module._cpu_has_aes() is expected  # cached
    finally:
        config_module._cpu_has_aes.cache_clear()


def test_cpu_has_aes_reads_cpuinfo(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    """A cpuinfo file without 'aes' wins over an x86_64 machine name."""
    import pathlib

    path = pathlib.Path(str(tmp_path)) / "cpuinfo"
    path.write_text("flags : fpu sse2\n")
    monkeypatch.setattr(config_module, "_CPUINFO_PATH", str(path))
    monkeypatch.setattr(config_module.platform, "machine", lambda: "x86_64")
    config_module._cpu_has_aes.cache_clear()
    try:
        assert config_module._cpu_has_aes() is False
    finally:
        config_module._cpu_has_aes.cache_clear()


# -- VmessSecurityLevel ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "member"), [("none", L.NONE), ("AUTO", L.AUTO), (" standard ", L.STANDARD), ("High", L.HIGH), ("", L.AUTO)]
)
def test_level_from_name(name: str, member: VmessSecurityLevel) -> None:
    """Level names are case-insensitive and stripped; empty means AUTO."""
    assert L.from_name(name) is member


@pytest.mark.parametrize("bad", ["tls", "low", "max", "1"])
def test_level_unknown_name(bad: str) -> None:
    """Unknown level names raise ConfigError listing the valid ones."""
    with pytest.raises(ConfigError) as info:
        L.from_name(bad)
    assert info.value.field == "security_level"
    assert "standard" in info.value.reason


# -- option-bit table -----------------------------------------------------------------------------------------------

_TABLE: dict[tuple[VmessSecurityLevel, VmessEncryption], int] = {
    (L.NONE, E.AES_128_CFB): S,
    (L.NONE, E.NONE): S,
    (L.NONE, E.AES_128_GCM): S,
    (L.NONE, E.CHACHA20_POLY1305): S,
    (L.NONE, E.AUTO): S,
    (L.NONE, E.ZERO): 0,
    (L.STANDARD, E.AES_128_CFB): S | M,
    (L.STANDARD, E.NONE): S | M,
    (L.STANDARD, E.AES_128_GCM): S | M,
    (L.STANDARD, E.CHACHA20_POLY1305): S | M,
    (L.STANDARD, E.AUTO): S | M,
    (L.STANDARD, E.ZERO): 0,
    (L.AUTO, E.AES_128_CFB): S,
    (L.AUTO, E.NONE): S | M,
    (L.AUTO, E.AES_128_GCM): S | M | P,
    (L.AUTO, E.CHACHA20_POLY1305): S | M | P,
    (L.AUTO, E.AUTO): S | M | P,
    (L.AUTO, E.ZERO): 0,
    (L.HIGH, E.AES_128_CFB): S,
    (L.HIGH, E.NONE): S | M,
    (L.HIGH, E.AES_128_GCM): S | M | P | A,
    (L.HIGH, E.CHACHA20_POLY1305): S | M | P | A,
    (L.HIGH, E.AUTO): S | M | P | A,
    (L.HIGH, E.ZERO): 0,
}
_AEAD = {E.AES_128_GCM, E.CHACHA20_POLY1305, E.AUTO}


@pytest.mark.parametrize("cpu", ["aes_cpu", "no_aes_cpu"])
@pytest.mark.parametrize("test_enabled", [False, True])
@pytest.mark.parametrize(("level", "encryption"), list(_TABLE))
def test_option_table(
    request: pytest.FixtureRequest,
    cpu: str,
    test_enabled: bool,
    level: VmessSecurityLevel,
    encryption: VmessEncryption,
) -> None:
    """Every level x cipher gives the documented bits; test_enabled adds A only for GCM/ChaCha (and AUTO)."""
    request.getfixturevalue(cpu)
    config = VmessConfig(UID, encryption=encryption, security_level=level, test_enabled=test_enabled)
    expected = _TABLE[(level, encryption)]
    if test_enabled and encryption in _AEAD:
        expected |= A
    assert config.options == expected


def test_default_config_sends_what_v2ray_sends(aes_cpu: None) -> None:
    """The default config is AEAD header, AES-128-GCM, S|M|P = 0x0D, exactly what V2Ray sends."""
    config = VmessConfig.new(UID)
    assert (config.security, config.options, config.is_legacy) == (3, 0x0D, False)


@given(
    encryption=st.sampled_from(list(E)),
    level=st.sampled_from(list(L)),
    test_enabled=st.booleans(),
    alter_id=st.integers(0, 65535),
    aes=st.booleans(),
)
def test_option_invariants(
    encryption: VmessEncryption, level: VmessSecurityLevel, test_enabled: bool, alter_id: int, aes: bool
) -> None:
    """Never P without M, never P with NONE, never A unless GCM/ChaCha, never R or reserved bits, ZERO is raw."""
    original = config_module._cpu_has_aes
    config_module._cpu_has_aes = lambda: aes  # type: ignore[assignment]
    try:
        config = VmessConfig(UID, encryption, alter_id, level, test_enabled)
        bits, code = config.options, config.security
    finally:
        config_module._cpu_has_aes = original  # type: ignore[assignment]
    assert bits & ~(S | M | P | A) == 0
    if bits & P:
        assert bits & M
        assert code in (3, 4)
    if bits & A:
        assert code in (3, 4)
    if encryption is E.ZERO:
        assert (bits, code) == (0, 5)
    else:
        assert bits & S
    assert code in (1, 3, 4, 5)


# -- VmessConfig ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given_id", [UID, str(UID), str(UID).upper(), UID.hex, f"{{{UID}}}", f"  {UID}\n", UID.bytes, bytearray(UID.bytes)]
)
def test_user_id_forms(given_id: object) -> None:
    """The user ID may be a UUID, any text form uuid.UUID accepts, or 16 raw bytes."""
    config = VmessConfig(given_id)  # type: ignore[arg-type]
    assert config.user_id == UID
    assert isinstance(config.user_id, uuid.UUID)


@pytest.mark.parametrize("bad", ["not-a-uuid", str(UID)[:-1], b"\x00" * 15, 12345, None, ""])
def test_user_id_invalid(bad: object) -> None:
    """A bad user ID is a ConfigError on user_id whose message does not contain the value."""
    with pytest.raises(ConfigError) as info:
        VmessConfig(bad)  # type: ignore[arg-type]
    assert info.value.field == "user_id"
    if isinstance(bad, str) and len(bad) > 4:
        assert bad not in str(info.value)
        assert bad not in repr(info.value.value)


def test_bad_user_id_message_masks_near_uuid() -> None:
    """A near-UUID (one digit short) is not echoed; at most its last 4 characters are."""
    bad = str(UID)[:-1]
    with pytest.raises(ConfigError) as info:
        VmessConfig(bad)  # type: ignore[arg-type]
    assert bad[:-4] not in str(info.value)


@pytest.mark.parametrize("alter_id", [0, 1, 64, 65535])
def test_alter_id_range_ok(alter_id: int) -> None:
    """alterId 0..65535 is accepted; > 0 selects the legacy header."""
    config = VmessConfig(UID, alter_id=alter_id)
    assert config.is_legacy is (alter_id > 0)


@pytest.mark.parametrize("alter_id", [-1, 65536, 1 << 40, True, "4", 4.0, None])
def test_alter_id_invalid(alter_id: object) -> None:
    """Out-of-range or non-int alterIds are refused."""
    with pytest.raises(ConfigError) as info:
        VmessConfig(UID, alter_id=alter_id)  # type: ignore[arg-type]
    assert info.value.field == "alter_id"


@pytest.mark.parametrize("value", [1, 0, "true", None])
def test_test_enabled_must_be_bool(value: object) -> None:
    """test_enabled is a bool in the constructor; strings are for from_url_params."""
    with pytest.raises(ConfigError) as info:
        VmessConfig(UID, test_enabled=value)  # type: ignore[arg-type]
    assert info.value.field == "test_enabled"


def test_constructor_accepts_enum_names() -> None:
    """Enum fields also accept their names and are stored as members."""
    config = VmessConfig(UID, encryption="CHACHA20-POLY1305", security_level="high")  # type: ignore[arg-type]
    assert config.encryption is E.CHACHA20_POLY1305
    assert config.security_level is L.HIGH


def test_constructor_rejects_bad_enum_values() -> None:
    """Bad cipher or level values name their field."""
    with pytest.raises(ConfigError) as info:
        VmessConfig(UID, encryption="rot13")  # type: ignore[arg-type]
    assert info.value.field == "encryption"
    with pytest.raises(ConfigError) as info:
        VmessConfig(UID, security_level=3)  # type: ignore[arg-type]
    assert info.value.field == "security_level"


def test_every_cipher_with_either_header() -> None:
    """No cipher/header combination is refused: CFB, GCM, NONE, ZERO all work with legacy and AEAD headers."""
    for encryption in E:
        for alter_id in (0, 4):
            config = VmessConfig(UID, encryption=encryption, alter_id=alter_id)
            assert config.is_legacy is (alter_id > 0)


def test_frozen_and_hashable() -> None:
    """Configs are immutable values: equal configs hash equally and can be set members."""
    config = VmessConfig.new(UID)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.alter_id = 3  # type: ignore[misc]
    assert config == VmessConfig.new(str(UID))
    assert len({config, VmessConfig.new(UID.bytes)}) == 1
    assert config != VmessConfig.new(uuid.uuid4())


def test_builders_return_new_instances() -> None:
    """with_* return modified copies and leave the original untouched; they accept names too."""
    base = VmessConfig.new(UID)
    built = (
        base.with_encryption("aes-128-cfb")
        .with_alter_id(4)
        .with_security_level(L.STANDARD)
        .with_test_enabled(True)
    )
    assert base == VmessConfig(UID)
    assert built == VmessConfig(UID, E.AES_128_CFB, 4, L.STANDARD, True)
    assert base.with_encryption(E.ZERO).encryption is E.ZERO
    assert base.with_security_level("HIGH").security_level is L.HIGH


def test_builders_validate() -> None:
    """with_* validate like the constructor."""
    base = VmessConfig.new(UID)
    with pytest.raises(ConfigError):
        base.with_alter_id(70000)
    with pytest.raises(ConfigError):
        base.with_encryption("bogus")
    with pytest.raises(ConfigError):
        base.with_security_level("ultra")
    with pytest.raises(ConfigError):
        base.with_test_enabled("yes")  # type: ignore[arg-type]


def test_repr_hides_user_id() -> None:
    """repr and str show only the last 4 hex digits of the user ID."""
    config = VmessConfig(UID, E.AES_128_GCM, 0, L.HIGH, True)
    for text in (repr(config), str(config)):
        assert str(UID) not in text
        assert UID.hex not in text
        assert str(UID)[:8] not in text
        assert "…0811" in text
        assert "encryption=AES_128_GCM" in text and "security_level=HIGH" in text and "test_enabled=True" in text
    assert repr(config).startswith("VmessConfig(")


def test_security_property(aes_cpu: None) -> None:
    """security is the wire code: ZERO as NONE, AUTO resolved."""
    assert VmessConfig(UID, E.ZERO).security == 5
    assert VmessConfig(UID, E.AUTO).security == 3
    assert VmessConfig(UID, E.AES_128_CFB, alter_id=1).security == 1


# -- from_url_params ------------------------------------------------------------------------------------------------


def test_from_url_params_seed_example() -> None:
    """The seed's example parameters give the expected config."""
    params = {"encryption": "aes-128-gcm", "alterId": "0", "security": "high", "test": "false"}
    config = VmessConfig.from_url_params(UID, params)
    assert config == VmessConfig(UID, E.AES_128_GCM, 0, L.HIGH, False)
    assert config.options == S | M | P | A


def test_from_url_params_defaults_and_unknown_keys() -> None:
    """Missing or empty values are defaults; unknown keys are ignored."""
    config = VmessConfig.from_url_params(str(UID), {"type": "tcp", "foo": "bar", "encryption": "", "alterId": ""})
    assert config == VmessConfig.new(UID)


@pytest.mark.parametrize(
    ("word", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("false", False), ("0", False), ("No", False)],
)
def test_from_url_params_test_words(word: str, expected: bool) -> None:
    """test accepts true/false/1/0/yes/no in any case."""
    assert VmessConfig.from_url_params(UID, {"test": word}).test_enabled is expected


def test_from_url_params_levels_and_alter_id() -> None:
    """security is a level and alterId a decimal number."""
    config = VmessConfig.from_url_params(UID, {"security": "none", "alterId": " 64 ", "encryption": "none"})
    assert (config.security_level, config.alter_id, config.encryption) == (L.NONE, 64, E.NONE)
    assert config.is_legacy


@pytest.mark.parametrize(
    ("params", "field", "value"),
    [
        ({"encryption": "aes-256-cfb"}, "encryption", "aes-256-cfb"),
        ({"alterId": "-1"}, "alterId", "-1"),
        ({"alterId": "65536"}, "alterId", "65536"),
        ({"alterId": "four"}, "alterId", "four"),
        ({"alterId": "0x10"}, "alterId", "0x10"),
        ({"security": "maximum"}, "security", "maximum"),
        ({"security": "tls"}, "security", "tls"),
        ({"security": "reality"}, "security", "reality"),
        ({"test": "maybe"}, "test", "maybe"),
    ],
)
def test_from_url_params_bad_values(params: dict[str, str], field: str, value: str) -> None:
    """Bad parameters raise ConfigError naming the parameter and its value."""
    with pytest.raises(ConfigError) as info:
        VmessConfig.from_url_params(UID, params)
    assert info.value.field == field
    assert info.value.value == value
    assert field in str(info.value) and value in str(info.value)


def test_from_url_params_bad_user_id() -> None:
    """A bad user ID from a URL is reported on user_id without the value."""
    with pytest.raises(ConfigError) as info:
        VmessConfig.from_url_params("1234567890-secret-ish", {})
    assert info.value.field == "user_id"
    assert "secret" not in str(info.value)
