"""The fwledger command line (see docs/CLI.md for the names users script against).

Exit codes: 0 done; 1 refused or failed (one ``error: ...`` line on stderr, no stack trace);
2 usage error. With ``--json`` a command prints exactly one JSON document on stdout.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ledger_node.codec.hashing import is_address, to_checksum_address
from ledger_node.errors import ConfigError, FwledgerError
from ledger_node.record import Version

from .settings import (  # load_key: for the command modules
    PASSPHRASE_ENV,
    PASSPHRASE_FILE_ENV,
    Settings,
    is_keystore,
    load_key,  # noqa: F401
    load_settings,
)

__all__ = ["cli", "main"]

#: tables going to a pipe or a file (scripts, logs) are laid out this wide instead of rich's 80
#: columns, so that no cell (a label, a hash) wraps; a terminal or COLUMNS keeps its own width
_PIPE_WIDTH = 200


if TYPE_CHECKING:
    from rich.console import Console


def _fit(console: Console) -> Console:
    """Lay ``console`` out as wide as ``COLUMNS`` says now, else its terminal, else :data:`_PIPE_WIDTH`."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        console.width = int(columns)
    elif not console.is_terminal:
        console.width = _PIPE_WIDTH
    return console


def _console(*, stderr: bool = False) -> Console:
    from rich.console import Console

    return _fit(Console(stderr=stderr, highlight=False))


class _LazyConsole:
    """A rich console made on first use: ``--json`` runs (scripts, devices) never import rich."""

    def __init__(self, *, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def _made(self) -> Console:
        if self._console is None:
            self._console = _console(stderr=self._stderr)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self._made(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._made(), name, value)


err_console: Console = _LazyConsole(stderr=True)  # type: ignore[assignment]
out_console: Console = _LazyConsole(stderr=False)  # type: ignore[assignment]


# ----------------------------------------------------------------------------- plumbing

@dataclass
class Ctx:
    flags: dict[str, Any] = field(default_factory=dict)
    _settings: Settings | None = None
    _w3: Any = None
    json_out: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    _signer: Any = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(**self.flags)
        return self._settings

    def w3(self) -> Any:
        if self._w3 is None:
            from ledger_node.providers import connect

            self._w3 = connect(self.settings.rpc, timeout=min(self.settings.timeout, 30.0), ca=self.settings.rpc_ca)
        return self._w3

    def trusted_w3(self) -> Any:
        """The node of a party that attests or acts on what it says (a tracker): embedded,
        loopback, or HTTPS (docs/THREATS.md, "The chain node").

        Raises:
            ConfigError: any other node.
        """
        from ledger_node.providers import untrusted_rpc_reason

        reason = untrusted_rpc_reason(self.settings.rpc, self.settings.rpc_ca)
        if reason is not None:
            raise ConfigError(reason)
        return self.w3()

    def deployment(self) -> Any:
        from ledger_node.registry import load_deployment

        return load_deployment(self.settings.home, int(self.w3().eth.chain_id))

    def signer(self) -> Any:
        """The account of ``--key-file`` (else ``<home>/keys/admin.key``); an encrypted keystore's
        passphrase from ``--passphrase-file`` / ``FWLEDGER_PASSPHRASE_FILE`` / ``FWLEDGER_PASSPHRASE``,
        else a prompt when stdin is a terminal.

        Raises:
            ConfigError: no key, unreadable file, no usable key, no or wrong passphrase.
        """
        if self._signer is None:
            s = self.settings
            passphrase = None
            if (is_keystore(s.signing_key_file()) and s.passphrase_file is None and sys.stdin.isatty()
                    and not os.environ.get(PASSPHRASE_FILE_ENV) and not os.environ.get(PASSPHRASE_ENV)):
                passphrase = str(click.prompt(f"Passphrase of {s.signing_key_file()}", hide_input=True, err=True))
            self._signer = s.signing_account(passphrase)
        return self._signer

    def registry(self, *, signer: bool = False) -> Any:
        from ledger_node.registry import Registry

        account = self.signer() if signer else None
        return Registry(self.w3(), self.deployment(), account, timeout=self.settings.timeout)

    def index_path(self) -> Path:
        dep = self.deployment()
        return self.settings.home / "index" / f"{dep.chain_id}-{dep.address.lower()}.sqlite"

    def fullnode(self) -> Any:
        from ledger_node.fullnode import FullNode, Index

        dep = self.deployment()
        index = Index(self.index_path())
        return FullNode(self.w3(), dep, index, confirmations=self.settings.confirmations,
                        batch_blocks=self.settings.batch_blocks)


class LazyGroup(click.Group):
    """A group some of whose commands live in other modules, imported only when they are needed.

    ``lazy`` maps a command's name to the modules that define it (``fwledger device ...`` imports
    the device's modules, not the tracker's or the ledger's); ``contributors`` are modules that add
    commands to this group, imported when a name is not found yet or the commands are listed
    (``--help`` lists every command, so it imports them all).
    """

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, ...]] | None = None,
                 contributors: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})
        self.contributors = contributors

    @staticmethod
    def _load(modules: tuple[str, ...]) -> None:
        for name in modules:
            importlib.import_module(name)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load(self.lazy.get(cmd_name, ()))
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None and self.contributors:
            self._load(self.contributors)
            cmd = super().get_command(ctx, cmd_name)
        return cmd

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load(self.contributors)
        return sorted({*super().list_commands(ctx), *self.lazy})


class FwGroup(LazyGroup):
    """Maps the project's errors to one line on stderr and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FwledgerError as exc:
            _fail(ctx, str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail(ctx, "interrupted", 130)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except OSError as exc:  # a file the user named, a port...: still one line
            _fail(ctx, f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), 1)
        except Exception as exc:  # a bug: still no stack trace unless asked for
            if os.environ.get("FWLEDGER_DEBUG"):
                raise
            _fail(ctx, f"internal error: {type(exc).__name__}: {exc} (set FWLEDGER_DEBUG=1 for the trace)", 1)


def _fail(ctx: click.Context, message: str, code: int) -> None:
    message = " ".join(str(message).split())
    obj = ctx.find_object(Ctx)
    if obj is not None and obj.json_out:
        click.echo(json.dumps({"ok": False, "error": message}))
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    def callback(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        if value:
            ctx.ensure_object(Ctx).json_out = True  # type: ignore[call-arg]
        return value

    return click.option("--json", "json_out", is_flag=True, expose_value=False, callback=callback,
                        is_eager=True, help="Print one JSON document on stdout.")(f)


def emit(obj: Any, human: Callable[[], None] | None = None) -> None:
    ctx = click.get_current_context().find_object(Ctx)
    if ctx is not None and ctx.json_out:
        click.echo(json.dumps(obj, indent=2, default=str))
    elif human is not None:
        _fit(out_console)
        human()
    else:
        click.echo(json.dumps(obj, indent=2, default=str))


def _admission_options(service: str, operators_default: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--admission``, ``--operator-key``, ``--manufacturer-ca`` of a service's run command
    (entities/admission.py); ``service`` names its environment variables (FWLEDGER_<service>_...)."""
    def add(f: Callable[..., Any]) -> Callable[..., Any]:
        f = click.option("--manufacturer-ca", "manufacturer_cas", multiple=True,
                         type=click.Path(dir_okay=False, path_type=Path),
                         help="Manufacturer CA certificate (PEM): its device certificates admit themselves "
                              f"(repeat) [env FWLEDGER_{service}_MANUFACTURER_CAS].")(f)
        f = click.option("--operator-key", "operator_keys", multiple=True, type=ADDRESS,
                         help="Address whose signed admission records are honoured (repeat) "
                              f"[env FWLEDGER_{service}_OPERATORS; {operators_default}].")(f)
        return click.option("--admission", type=click.Choice(["required", "open"]), default=None,
                            help="'required': only devices the operator admitted are served; 'open': lab mode, "
                                 f"any signing key is a device [env FWLEDGER_{service}_ADMISSION; required].")(f)
    return add


class AddressParam(click.ParamType):
    name = "ADDRESS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not isinstance(value, str) or not is_address(value):
            self.fail(f"{value!r} is not an Ethereum address", param, ctx)
        return to_checksum_address(value)


class Hash32Param(click.ParamType):
    name = "HASH"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> bytes:
        try:
            raw = bytes.fromhex(str(value).removeprefix("0x"))
        except ValueError:
            self.fail(f"{value!r} is not hex", param, ctx)
        if len(raw) != 32:
            self.fail(f"{value!r} is not 32 bytes of hex", param, ctx)
        return raw


class HashRefParam(click.ParamType):
    """A release's header hash as users copy it: all 64 hex digits or a prefix of at least 8
    (``0x`` optional, any case). Converts to the lowercase digits; the command resolves a prefix
    against the full node's index (:func:`entities.ledger_cli.release_by_ref`)."""

    name = "HASH"
    MIN_DIGITS = 8

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().lower().removeprefix("0x")
        if not self.MIN_DIGITS <= len(text) <= 64 or any(c not in "0123456789abcdef" for c in text):
            self.fail(f"{value!r} is not a header hash: give its 64 hex digits or at least its first "
                      f"{self.MIN_DIGITS}", param, ctx)
        return text


class VersionParam(click.ParamType):
    name = "X.Y.Z"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Version:
        if isinstance(value, Version):
            return value
        try:
            return Version.parse(value)
        except FwledgerError as exc:
            self.fail(str(exc), param, ctx)


ADDRESS, HASH32, HASH_REF, VERSION = AddressParam(), Hash32Param(), HashRefParam(), VersionParam()


# ----------------------------------------------------------------------------- root

# the command groups kept in their own modules, imported when their group runs
_LEDGER_CLI = ("entities.ledger_cli",)
_GROUP_MODULES: dict[str, tuple[str, ...]] = {
    "author": ("entities.author_cli",), "device": ("entities.device_cli",), "server": ("entities.server_cli",),
    "chain": _LEDGER_CLI, "admin": _LEDGER_CLI, "node": _LEDGER_CLI, "release": _LEDGER_CLI, "devnet": _LEDGER_CLI,
}


@click.group(cls=FwGroup, lazy=_GROUP_MODULES, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(path_type=Path), default=None,
              help="Folder for keys, deployment records, databases [env FWLEDGER_HOME; ~/.fwledger].")
@click.option("--rpc", default=None, help="Ethereum JSON-RPC URL, or 'embedded' [env FWLEDGER_RPC].")
@click.option("--key-file", type=click.Path(path_type=Path), default=None,
              help="Signing key file: hex private key or keystore JSON [env FWLEDGER_KEY_FILE].")
@click.option("--passphrase-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File whose first line is the keystore's passphrase, for every command that signs "
                   "[env FWLEDGER_PASSPHRASE_FILE; else env FWLEDGER_PASSPHRASE, else a prompt on a terminal].")
@click.version_option(package_name="fwledger")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, rpc: str | None, key_file: Path | None,
        passphrase_file: Path | None) -> None:
    """fwledger: secure firmware updates on a distributed ledger (ITU-T X.1368, Appendix II)."""
    obj = ctx.ensure_object(Ctx)  # type: ignore[call-arg]
    obj.flags = {"home": home, "rpc": rpc, "key_file": key_file, "passphrase_file": passphrase_file}


def _ctx() -> Ctx:
    return click.get_current_context().find_object(Ctx)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- demo

@cli.command("demo")
@click.option("--devices", type=click.IntRange(4, 1000), default=12, show_default=True,
              help="Devices in the demo fleet (at least 4: tampered, other class, power cut, location-denied).")
@json_option
def demo_cmd(devices: int) -> None:
    """X.1368 Figure 1 end to end on the embedded chain (real registry, author, firmware server,
    tracker and devices on loopback); exit 0 only if every expected outcome happened."""
    from .demo import run_demo

    report = run_demo(devices=devices, quiet=_ctx().json_out, console=err_console)
    emit(report, lambda: None)
    if not report["ok"]:
        failed = [s["step"] for s in report["steps"] if not s["ok"]]
        raise FwledgerError(f"demo: unexpected outcome in: {', '.join(failed)}")


@cli.command("simulate")
@click.option("--devices", type=click.IntRange(1, 1_000_000), default=1000, show_default=True,
              help="Lightweight devices in the simulated fleet.")
@click.option("--depth", type=click.IntRange(1, 6), default=1, show_default=True,
              help="Tracker tree depth: 1 = flat (devices -> server module), 2 = one level of intermediates...")
@click.option("--fanout", type=click.IntRange(2, 100_000), default=100, show_default=True,
              help="Devices (or modules) below each intermediate.")
@click.option("--image-kib", type=click.IntRange(1, 65536), default=64, show_default=True,
              help="Size of the simulated firmware image.")
@click.option("--fail-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of devices whose trial boot fails (to watch a rollout halt).")
@click.option("--waves", default="0.1,0.5,1.0", show_default=True, help="Rollout waves (cumulative shares).")
@json_option
def simulate_cmd(devices: int, depth: int, fanout: int, image_kib: int, fail_rate: float, waves: str) -> None:
    """Fleet simulation: time to full-fleet update, bytes served, chain queries by devices and by
    trackers, failures and their causes, for a flat or a hierarchical tracker tree. Progress goes
    to stderr (a live bar on a terminal, else a line per phase and every 5 s), also with --json."""
    from .simulate import run_simulation

    try:
        shares = tuple(float(w) for w in waves.split(","))
    except ValueError:
        raise click.BadParameter(f"{waves!r} is not a comma-separated list of shares", param_hint="--waves") from None
    report = run_simulation(devices=devices, depth=depth, fanout=fanout, image_size=image_kib * 1024,
                            fail_rate=fail_rate, waves=shares, quiet=_ctx().json_out, console=err_console,
                            progress=True)
    emit(report, lambda: None)
    if not report["ok"]:
        raise FwledgerError("simulate: not every entitled device was updated, or a non-entitled one was")


# ----------------------------------------------------------------------------- local stack (up / down)

@cli.command("up")
@click.option("--devices", type=click.IntRange(1, 200), default=3, show_default=True, help="Device agents to run.")
@click.option("--port-base", type=click.IntRange(1, 65530), default=None,
              help="Ports P (devnet), P+1 (firmware server), P+2 (tracker), P+3 (intermediate) [free ports].")
@click.option("--block-time", type=click.FloatRange(min=0.1, max=60), default=2.0, show_default=True,
              help="Seconds between the devnet's blocks (keeps headers fresh for the devices).")
@click.option("--device-interval", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Seconds between a device agent's passes.")
@click.option("--timeout", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="Seconds each component may take to become healthy.")
@click.option("--tls", is_flag=True,
              help="Serve every service over HTTPS with certificates from a fleet CA made in <home>/stack/fleet-ca; "
                   "the devices pin it (the deployment across hosts, on one machine).")
@json_option
def up_cmd(devices: int, port_base: int | None, block_time: float, device_interval: float, timeout: float,
           tls: bool) -> None:
    """Start the local stack: devnet, registry and setup, firmware server, tracker(s), N device agents."""
    from .stack import dashboard_lines, up

    c = _ctx()
    rec = up(c.settings.home, devices=devices, port_base=port_base, block_time=block_time,
             device_interval=device_interval, timeout=timeout, tls=tls,
             progress=None if c.json_out else (lambda msg: err_console.print(msg, markup=False)))

    def human() -> None:
        stack_dir = Path(rec["home"]) / "stack"
        from rich.table import Table

        t = Table(title=f"fwledger stack ({rec['topology']} topology), up in {rec.get('seconds', '?')} s")
        for col in ("component", "pid", "where", "address", "log"):
            t.add_column(col, overflow="fold")
        for p in rec["processes"]:
            where = p.get("url") or (os.path.relpath(p["dir"], stack_dir) + " -> " + p["tracker"] if "dir" in p else "")
            t.add_row(p["name"], str(p["pid"]), where, p.get("address") or "", os.path.relpath(p["log"], stack_dir))
        out_console.print(t)
        out_console.print(f"files in {stack_dir} (record: stack.json)", markup=False)
        out_console.print(f"registry {rec['chain']['registry']} on chain {rec['chain']['chain_id']}; "
                          f"vendor {rec['setup']['vendor']}, hardware {rec['setup']['hardware']}, devices run "
                          f"{rec['setup']['product']} {rec['setup']['factory_version']}", markup=False)
        for line in dashboard_lines(rec):  # the operator's token rides in the fragment; stack.json holds none
            out_console.print(line, markup=False, soft_wrap=True)
        out_console.print("first release:", markup=False)
        for k in ("env", "image", "build", "publish", "watch", "down"):
            out_console.print("  " + rec["commands"][k], markup=False, soft_wrap=True)

    emit(rec, human)


@cli.command("down")
@json_option
def down_cmd() -> None:
    """Stop the local stack: exactly the processes `fwledger up` recorded, then the devnet."""
    from .stack import down

    out = down(_ctx().settings.home)
    emit(out, lambda: out_console.print(
        "\n".join(f"stopped {p['name']} (pid {p['pid']}): {p['stopped']}" for p in out["stopped"])
        or "no stack was running", markup=False))


# ----------------------------------------------------------------------------- fleet CA (mutual TLS)

@cli.group(cls=LazyGroup, contributors=("entities.fleet_ca_cli", "entities.admission_cli", "entities.anchors_cli"))
def fleet() -> None:
    """The fleet: device admission (admit, import, pending, accept, decommission...) and the CAs
    (mutual TLS between tracker modules, docs/MODULES.md 5; manufacturer certificates)."""


# ----------------------------------------------------------------------------- status tracker

@cli.group(cls=LazyGroup, contributors=("entities.tracker_cli", "entities.anchors_cli", "entities.rollout_cli"))
def tracker() -> None:
    """The status tracker: full node, attestations, fleet inventory, triggers (X.1368 C11.2, clause 9)."""


_TRACKER_URL = click.option("--tracker", "tracker_url", envvar="FWLEDGER_TRACKER", default="http://127.0.0.1:8470",
                            show_default=True, help="Tracker base URL [env FWLEDGER_TRACKER].")
_TRACKER_KEY = click.option("--tracker-key", "tracker_key", type=ADDRESS, default=None,
                            help="Require responses signed by this tracker address.")
_TRACKER_MAX_RESPONSE = 64 << 20


def _client_tls(session: Any) -> None:
    """HTTPS to a tracker module or firmware server from the CLI (docs/MODULES.md 5): the CA to
    verify it (``FWLEDGER_TLS_CA``) and this operator's certificate and key (``FWLEDGER_TLS_CERT``,
    ``FWLEDGER_TLS_KEY``, issued by ``fwledger fleet issue --role client``)."""
    ca, cert, key = (os.environ.get(f"FWLEDGER_TLS_{k}") for k in ("CA", "CERT", "KEY"))
    for name, value in (("FWLEDGER_TLS_CA", ca), ("FWLEDGER_TLS_CERT", cert), ("FWLEDGER_TLS_KEY", key)):
        if value and not Path(value).is_file():
            raise ConfigError(f"{name}: no file {value}")
    if bool(cert) != bool(key):
        raise ConfigError("FWLEDGER_TLS_CERT and FWLEDGER_TLS_KEY go together")
    if ca:
        session.verify = ca
        session.trust_env = False  # else REQUESTS_CA_BUNDLE from the environment would replace the pinned CA
    if cert and key:
        session.cert = (cert, key)


def _tracker_call(url: str, method: str, path: str, body: Any = None, *, tracker_key: str | None = None) -> Any:
    """One signed request to a tracker; the response's signature is checked (and pinned with
    ``--tracker-key``). Refusals become one-line errors."""
    import requests

    from .protocol.http_auth import sign_request, verify_response
    from .service_identity import IdentityError, fetch_identity

    c = _ctx()
    account = c.signer()
    data = b"" if body is None else json.dumps(body).encode()
    req = requests.Request(method, url.rstrip("/") + path, data=data or None,
                           headers={"Content-Type": "application/json"} if data else {}).prepare()
    signed_path = req.path_url
    timeout = min(c.settings.timeout, 60.0)
    try:
        with requests.Session() as session:
            _client_tls(session)
            try:
                audience = tracker_key or fetch_identity(url, session=session, timeout=timeout)
            except IdentityError as exc:
                raise FwledgerError(f"cannot reach the tracker at {url}: {exc}" if exc.unreachable
                                    else f"the tracker's answer is not trustworthy: {exc}") from None
            req.headers.update(sign_request(account, method, signed_path, data, audience=audience))
            resp = session.send(req, timeout=timeout, stream=True)
            raw = resp.raw.read(_TRACKER_MAX_RESPONSE + 1, decode_content=True)
    except requests.RequestException as exc:
        raise FwledgerError(f"cannot reach the tracker at {url}: {type(exc).__name__}") from exc
    if len(raw) > _TRACKER_MAX_RESPONSE:
        raise FwledgerError(f"the tracker's answer is larger than {_TRACKER_MAX_RESPONSE} bytes")
    try:
        verify_response(resp.headers, resp.status_code, signed_path, raw,
                        request_nonce=str(req.headers["X-Fwledger-Nonce"]), tracker=tracker_key)
        obj = json.loads(raw)
    except FwledgerError as exc:
        raise FwledgerError(f"the tracker's answer is not trustworthy: {exc}") from exc
    except ValueError as exc:
        raise FwledgerError(f"the tracker answered {resp.status_code} with no JSON") from exc
    if resp.status_code >= 400:
        err = obj.get("error", {}) if isinstance(obj, dict) else {}
        raise FwledgerError(f"tracker refused ({resp.status_code} {err.get('code', '?')}): {err.get('message', '')}")
    return obj


# command groups kept in their own modules register themselves when first needed: _GROUP_MODULES
# (top-level groups) and the contributors of fleet, tracker and device (LazyGroup)


#: set by a command group whose processes :func:`main` may end without the interpreter's teardown
_QUICK_EXIT: list[bool] = []


def quick_exit() -> None:
    """Let :func:`main` end this process without the interpreter's teardown (clearing every module,
    a last garbage collection: ~20 ms of a device command's process) once its command returned and
    its output is flushed. For commands whose every durable step is synced before it is relied on
    (the device's: a power cut at any instant is safe for them, so skipping a teardown is too) and
    that leave no thread working; only the ``fwledger`` entry point does it, never ``cli`` called
    from Python (tests, embedding)."""
    _QUICK_EXIT.append(True)


def main() -> None:
    try:
        cli(prog_name="fwledger")
    except SystemExit as exc:
        if not _QUICK_EXIT:
            raise
        code = exc.code
    else:  # pragma: no cover - click's standalone mode always ends with SystemExit
        code = 0
    if not isinstance(code, int):
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: the exit code still tells
        code = code or 1
    os._exit(code)


if __name__ == "__main__":  # python -m entities.cli: run the package's module, where admission_cli registered
    from entities.cli import main as _main

    _main()
