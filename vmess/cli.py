"""The ``vmess`` command line: ``client``, ``server``, ``link``, ``demo``, ``bench``.

Exit codes: 0 success (also after a clean stop by SIGINT/SIGTERM); 1 the job failed (a demo transfer that did
not arrive intact, a server that could not start); 2 bad arguments, a bad share link or a bad config file.
Long-running commands print ``listening on HOST:PORT`` when ready and totals when they stop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any, Callable, Coroutine, Dict, List, Optional, Sequence, Tuple

from . import __version__, _core
from .errors import ConfigError, UnsupportedError, VmessError

__all__ = ["main", "build_parser"]

log = logging.getLogger("vmess.cli")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A bad argument or input: printed as one line, exit status 2."""


def parse_hostport(text: str, what: str = "--listen") -> Tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"{what}: expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "127.0.0.1", int(port_text)


def _run(coro_factory: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run the coroutine on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return asyncio.run(coro_factory())
    return uvloop.run(coro_factory())  # type: ignore[no-any-return]


def _install_stop_signals() -> "asyncio.Future[str]":
    """A future that SIGINT or SIGTERM resolves with the signal's name (install before printing readiness)."""
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[str] = loop.create_future()
    def on_signal(sig: signal.Signals) -> None:
        if not stopped.done():
            stopped.set_result(sig.name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signal support
            pass
    return stopped


def _format_addr(addr: Tuple[str, int]) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ----------------------------------------------------------------------------------------------- server


def load_server_config(path: str) -> Dict[str, Any]:
    """Read the server's JSON config: listen, users [{id, alterId, name}], policy, timeouts."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise UsageError(f"--config: cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"--config: {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config: {path} must hold a JSON object")
    return data


def _server_settings(args: argparse.Namespace) -> Dict[str, Any]:
    from .config import parse_alter_id
    from .protocol.server import UserTable

    cfg = load_server_config(args.config) if args.config else {}
    listen = args.listen or cfg.get("listen") or "127.0.0.1:10086"
    host, port = parse_hostport(str(listen))
    users = UserTable()
    entries: List[Tuple[object, int, str]] = []
    for i, entry in enumerate(cfg.get("users", [])):
        if not isinstance(entry, dict) or "id" not in entry:
            raise UsageError(f"--config: users[{i}] must be an object with an 'id'")
        entries.append((entry["id"], entry.get("alterId", 0), str(entry.get("name", ""))))
    for user_id in args.user or []:
        entries.append((user_id, args.alter_id, ""))
    if not entries:
        raise UsageError("no users: give --user UUID or a --config file with users")
    for i, (user_id, alter_id, name) in enumerate(entries):
        try:
            users.add(str(user_id), parse_alter_id(alter_id, "alterId"), name)
        except (ValueError, ConfigError) as exc:
            raise UsageError(f"user #{i + 1}: invalid id or alterId ({exc})") from None
    policy = cfg.get("policy", {}) or {}
    timeouts = cfg.get("timeouts", {}) or {}
    settings: Dict[str, Any] = {"users": users, "host": host, "port": port}
    if "blockPrivate" in policy or args.block_private:
        settings["block_private"] = bool(policy.get("blockPrivate", False) or args.block_private)
    if "maxSessions" in policy:
        settings["max_sessions"] = int(policy["maxSessions"])
    if "handshake" in timeouts:
        settings["handshake_timeout"] = float(timeouts["handshake"])
    if "idle" in timeouts:
        settings["idle_timeout"] = float(timeouts["idle"])
    if "park" in timeouts:
        settings["park_idle"] = float(timeouts["park"])
    if args.park_idle is not None:
        settings["park_idle"] = args.park_idle
    from .transport.options import server_transport_options  # ssl= / websocket= from --cert/--key/--ws-* and "tls"/"ws"

    settings.update(server_transport_options(
        cert=args.cert, key=args.key, ws_path=args.ws_path, ws_host=args.ws_host, config=cfg,
        base_dir=os.path.dirname(os.path.abspath(args.config)) if args.config else ".",
    ))
    return settings


async def _serve(args: argparse.Namespace) -> int:
    from .aio_server import start_server

    settings = _server_settings(args)
    stop = _install_stop_signals()
    try:
        server = await start_server(**settings)
    except OSError as exc:
        print(f"vmess server: cannot listen on {settings['host']}:{settings['port']}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    print(f"listening on {_format_addr(server.address)}", flush=True)
    from .transport.options import describe_server_transport

    log.info("transport: %s", describe_server_transport(settings))
    how = await stop
    log.info("stopping on %s", how)
    await server.shutdown(args.grace)
    stats = server.stats
    print(
        f"stopped: {stats.sessions_total} sessions, {stats.bytes_up} bytes up, {stats.bytes_down} bytes down, "
        f"{sum(stats.failures.values())} failed",
        flush=True,
    )
    return EXIT_OK


# ----------------------------------------------------------------------------------------------- client


async def _client(args: argparse.Namespace) -> int:
    from .inbound.server import start_local_proxy
    from .links import parse_link

    link = parse_link(args.link)
    from .transport import TransportSettings

    TransportSettings.from_link(link)  # UnsupportedError for transports not implemented (grpc, kcp, reality ...)
    host, port = parse_hostport(args.listen)
    auth = None
    stop = _install_stop_signals()
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep or not user:
            raise UsageError("--auth: expected USER:PASS")
        auth = (user, password)
    try:
        proxy = await start_local_proxy(link, host, port, auth=auth, clock_offset=args.clock_offset,
                                        **({} if args.park_idle is None else {"park_idle": args.park_idle}))
    except OSError as exc:
        print(f"vmess client: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    print(f"listening on {_format_addr(proxy.address)}", flush=True)
    log.info("upstream VMess server %s (%s)", _format_addr((link.server_host, link.server_port)), link.name or "-")
    await stop
    proxy.close()
    await proxy.wait_closed()
    stats = proxy.stats
    print(f"stopped: {stats.sessions} sessions, {stats.bytes_up} bytes up, {stats.bytes_down} bytes down", flush=True)
    return EXIT_OK


# ----------------------------------------------------------------------------------------------- link


def link_to_json(link: Any) -> Dict[str, Any]:
    """The normalised form of a parsed link, as printed by ``vmess link``."""
    config = link.config
    return {
        "name": link.name,
        "server": link.server_host,
        "port": link.server_port,
        "id": str(config.user_id),
        "alterId": config.alter_id,
        "encryption": config.encryption.name_on_link,
        "level": config.security_level.name.lower(),
        "transport": dict(link.transport),
        "supported": _transport_supported(link),
        "v2rayN": link.to_v2rayn(),
    }


def _transport_supported(link: Any) -> bool:
    from .transport import is_supported

    return is_supported(link)


def _link(args: argparse.Namespace) -> int:
    from .links import parse_link, parse_subscription

    status = EXIT_OK
    for item in args.links:
        if item == "-":
            links, problems = parse_subscription(sys.stdin.read())
            for link in links:
                print(json.dumps(link_to_json(link), ensure_ascii=False))
            for line_no, reason in problems:
                print(f"vmess link: line {line_no}: {reason}", file=sys.stderr)
                if not reason.startswith("skipped"):
                    status = EXIT_USAGE
            continue
        try:
            link = parse_link(item)
        except ConfigError as exc:
            print(f"vmess link: {exc}", file=sys.stderr)
            status = EXIT_USAGE
            continue
        print(json.dumps(link_to_json(link), ensure_ascii=False))
    return status


# ----------------------------------------------------------------------------------------------- demo / bench


async def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    result = await run_demo(
        int(args.size * (1 << 20)), encryption=args.encryption, level=args.level, handshakes=args.handshakes
    )
    return EXIT_OK if result.ok else EXIT_FAILED


def _bench(args: argparse.Namespace) -> int:
    from .corebench import run_core_bench

    print(f"vmess {__version__} core benchmark (live backend: {_core.BACKEND})", flush=True)
    return run_core_bench(sys.stdout, budget=args.budget)


# ----------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmess", description="VMess (V2Ray's proxy protocol) for Python.")
    parser.add_argument("--version", action="version", version=f"vmess {__version__} ({_core.BACKEND} core)")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("client", help="local SOCKS5 + HTTP proxy that forwards through a VMess server")
    p.add_argument("link", help="a vmess:// share link")
    p.add_argument("--listen", default="127.0.0.1:1080", help="HOST:PORT (default 127.0.0.1:1080)")
    p.add_argument("--auth", metavar="USER:PASS", help="require SOCKS5 username/password and HTTP proxy Basic auth")
    p.add_argument("--clock-offset", type=float, default=0.0, metavar="SECONDS",
                   help="add SECONDS to this machine's clock when stamping requests (servers allow +-120 s)")
    p.add_argument("--park-idle", type=float, metavar="SECONDS",
                   help="seconds without traffic before a TCP session parks its sockets to save memory (default 1; 0 = never)")

    p = sub.add_parser("server", help="VMess inbound with a direct outbound")
    p.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:10086, or the config file's)")
    p.add_argument("--user", action="append", metavar="UUID", help="a user ID (repeatable)")
    p.add_argument("--alter-id", type=int, default=0, help="alterId for --user (0 = AEAD only, > 0 also legacy)")
    p.add_argument("--config", metavar="FILE", help="JSON: listen, users [{id, alterId, name}], policy, timeouts, tls, ws")
    p.add_argument("--block-private", action="store_true", help="refuse private, loopback and link-local targets")
    p.add_argument("--grace", type=float, default=5.0, help="seconds to let sessions finish on stop (default 5)")
    p.add_argument("--park-idle", type=float, metavar="SECONDS",
                   help="seconds without traffic before a TCP session parks its sockets to save memory (default 1, config: timeouts.park; 0 = never)")
    p.add_argument("--cert", metavar="FILE", help="serve TLS with this PEM certificate chain (config: tls.cert)")
    p.add_argument("--key", metavar="FILE", help="PEM private key for --cert (config: tls.key)")
    p.add_argument("--ws-path", metavar="PATH", help="serve WebSocket on this path (config: ws.path)")
    p.add_argument("--ws-host", metavar="HOST", help="with --ws-path: require this Host header (config: ws.host)")

    p = sub.add_parser("link", help="parse share links or a subscription ('-' reads stdin) and print JSON")
    p.add_argument("links", nargs="+", metavar="LINK")

    p = sub.add_parser("demo", help="server + client in-process on loopback, a verified transfer, figures")
    p.add_argument("--size", type=float, default=256, help="MiB to transfer (default 256)")
    p.add_argument("--encryption", default="auto", help="auto, aes-128-gcm, chacha20-poly1305, none, zero ...")
    p.add_argument("--level", default="auto", help="security level: none, standard, auto, high")
    p.add_argument("--handshakes", type=int, default=20, help="connections timed for handshake latency")

    p = sub.add_parser("bench", help="quick native vs pure table of the core")
    p.add_argument("--budget", type=float, default=0.25, help="seconds per row and backend (default 0.25)")
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.ERROR if args.quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``vmess`` console script and ``python -m vmess``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    try:
        if args.command == "link":
            return _link(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "demo":
            if args.size <= 0:
                raise UsageError("--size must be positive")
            return _run(lambda: _demo(args))
        if args.command == "server":
            return _run(lambda: _serve(args))
        if args.command == "client":
            return _run(lambda: _client(args))
    except UsageError as exc:
        print(f"vmess {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ConfigError, UnsupportedError) as exc:
        print(f"vmess {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except VmessError as exc:
        print(f"vmess {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
