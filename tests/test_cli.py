"""The ``vmess`` command line, run as a subprocess (``python -m vmess``)."""

from __future__ import annotations

import base64
import json
import signal
import uuid

import pytest

from .cli_process import CliProcess, run_cli

UID = "b831381d-6324-4d53-ad4f-8cda48b30811"


def v2rayn(obj: dict) -> str:
    return "vmess://" + base64.b64encode(json.dumps(obj).encode()).decode()


def test_demo_small_transfer_passes() -> None:
    result = run_cli(["demo", "--size", "8", "--handshakes", "3"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sha256 at the sink: match" in result.stdout
    assert "MB/s" in result.stdout and "handshake latency" in result.stdout
    assert "backend:" in result.stdout


GOOD_LINKS = [
    # (link, expected server, port, encryption, transport net, supported)
    (v2rayn({"v": "2", "ps": "hk-01", "add": "hk.example.net", "port": "443", "id": UID, "aid": "0", "scy": "auto",
             "net": "ws", "type": "none", "host": "cdn.example.net", "path": "/ray", "tls": "tls", "sni": "cdn.example.net"}),
     "hk.example.net", 443, "auto", "ws", True),
    (v2rayn({"v": 2, "ps": "plain", "add": "10.1.2.3", "port": 10086, "id": UID, "aid": 0, "scy": "aes-128-gcm",
             "net": "tcp", "type": "none", "host": "", "path": "", "tls": ""}),
     "10.1.2.3", 10086, "aes-128-gcm", "tcp", True),
    (f"vmess://{UID}@[2001:db8::1]:8443?type=tcp&encryption=chacha20-poly1305&security=none#%E4%B8%AD",
     "2001:db8::1", 8443, "chacha20-poly1305", "tcp", True),
    (f"vmess://{UID}@example.org:443?encryption=aes-128-gcm&alterId=0&security=high&test=false",
     "example.org", 443, "aes-128-gcm", "tcp", True),
    (f"vmess://{UID}@example.org:443?type=grpc&serviceName=svc&security=tls&sni=example.org",
     "example.org", 443, "auto", "grpc", False),
]


@pytest.mark.parametrize("link,server,port,encryption,net,supported", GOOD_LINKS)
def test_link_prints_normalised_json(link: str, server: str, port: int, encryption: str, net: str, supported: bool) -> None:
    result = run_cli(["link", link])
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert (out["server"], out["port"], out["encryption"], out["transport"]["net"], out["supported"]) == (
        server, port, encryption, net, supported
    )
    # The v2rayN form written back parses to the same server.
    again = json.loads(run_cli(["link", out["v2rayN"]]).stdout)
    assert (again["server"], again["port"]) == (server, port)


BAD_LINKS = [
    ("vmess://!!!notbase64!!!", "link"),
    (v2rayn({"add": "a.b", "port": "443", "aid": "0"}), "id"),
    (v2rayn({"add": "a.b", "port": "70000", "id": UID}), "port"),
    (v2rayn({"add": "a.b", "port": "443", "id": "not-a-uuid"}), "id"),
    (v2rayn({"add": "a.b", "port": "443", "id": UID, "scy": "rot13"}), "scy"),
    (f"vmess://{UID}@host:0?encryption=aes-128-gcm", "port"),
    ("ss://YWVzLTI1Ni1nY206cGFzcw@host:8388", "link"),
]


@pytest.mark.parametrize("link,field", BAD_LINKS)
def test_bad_link_exits_2_with_one_line_reason(link: str, field: str) -> None:
    result = run_cli(["link", link])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0]
    assert UID not in result.stderr


def test_link_subscription_from_stdin() -> None:
    good = GOOD_LINKS[1][0]
    body = base64.b64encode(f"{good}\r\n{GOOD_LINKS[2][0]}\nvmess://broken\n".encode()).decode()
    result = run_cli(["link", "-"], input=body)
    assert result.returncode == 2  # one bad line
    assert len(result.stdout.strip().splitlines()) == 2
    assert "line 3" in result.stderr


def test_bench_runs_quickly() -> None:
    result = run_cli(["bench", "--budget", "0.02"])
    assert result.returncode == 0, result.stderr
    assert "seal GCM" in result.stdout and "native" in result.stdout


def test_server_starts_and_stops_cleanly_on_sigterm_and_sigint() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        with CliProcess(["server", "--listen", "127.0.0.1:0", "--user", str(uuid.uuid4())]) as proc:
            assert proc.address is not None and proc.port > 0
            assert proc.stop(sig) == 0
            assert any(line.startswith("stopped:") for line in proc.stdout_lines), proc.output()


def test_server_config_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "server.json"
    cfg.write_text(json.dumps({
        "listen": "127.0.0.1:0",
        "users": [{"id": str(uuid.uuid4()), "alterId": 4, "name": "alice"}, {"id": str(uuid.uuid4())}],
        "policy": {"blockPrivate": False, "maxSessions": 100},
        "timeouts": {"handshake": 10, "idle": 60},
    }))
    with CliProcess(["server", "--config", str(cfg)]) as proc:
        assert proc.port > 0


@pytest.mark.parametrize(
    "args,needle",
    [
        (["server", "--listen", "127.0.0.1:0"], "no users"),
        (["server", "--listen", "nonsense", "--user", UID], "--listen"),
        (["server", "--listen", "127.0.0.1:0", "--user", "not-a-uuid"], "user #1"),
        (["client", "vmess://garbage"], "link"),
        (["client", f"vmess://{UID}@h:1?type=grpc&security=tls"], "grpc"),
    ],
)
def test_bad_arguments_exit_2(args: list, needle: str) -> None:
    result = run_cli(args, timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    assert needle in result.stderr and UID not in result.stderr


def test_python_dash_m_and_version() -> None:
    result = run_cli(["--version"])
    assert result.returncode == 0 and result.stdout.startswith("vmess ")
