"""The fwledger command line (see shared/CLI.md for the names users script against).

Exit codes: 0 done; 1 refused or failed (one ``error: ...`` line on stderr, no stack trace);
2 usage error. With ``--json`` a command prints exactly one JSON document on stdout.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from eth_utils import is_address, to_checksum_address
from rich.console import Console
from rich.table import Table

from ledger_node.errors import ConfigError, FwledgerError
from ledger_node.record import (
    ZERO_HASH,
    ReleaseData,
    ReleaseRecord,
    Version,
    dependencies_from_texts,
)

from .settings import Settings, load_key, load_settings

__all__ = ["cli", "main"]

err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False)


# ----------------------------------------------------------------------------- plumbing

@dataclass
class Ctx:
    flags: dict[str, Any] = field(default_factory=dict)
    _settings: Settings | None = None
    _w3: Any = None
    json_out: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

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

    def registry(self, *, signer: bool = False) -> Any:
        from ledger_node.registry import Registry

        account = load_key(self.settings.signing_key_file()) if signer else None
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


class FwGroup(click.Group):
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


class VersionParam(click.ParamType):
    name = "X.Y.Z"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Version:
        if isinstance(value, Version):
            return value
        try:
            return Version.parse(value)
        except FwledgerError as exc:
            self.fail(str(exc), param, ctx)


ADDRESS, HASH32, VERSION = AddressParam(), Hash32Param(), VersionParam()


def _admin_human(what: str) -> Callable[[Any], Callable[[], None]]:
    def make(res: Any) -> Callable[[], None]:
        def show() -> None:
            if res.executed:
                out_console.print(f"[green]done[/]: {what} (tx {res.tx}, block {res.block})")
            else:
                out_console.print(f"[yellow]approval recorded[/]: {what}: {res.approvals} of {res.threshold} "
                                  f"administrators have approved; waiting for {res.threshold - res.approvals} more")
        return show
    return make


# ----------------------------------------------------------------------------- root

@click.group(cls=FwGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(path_type=Path), default=None,
              help="Folder for keys, deployment records, databases [env FWLEDGER_HOME; ~/.fwledger].")
@click.option("--rpc", default=None, help="Ethereum JSON-RPC URL, or 'embedded' [env FWLEDGER_RPC].")
@click.option("--key-file", type=click.Path(path_type=Path), default=None,
              help="Signing key file: hex private key or keystore JSON [env FWLEDGER_KEY_FILE].")
@click.version_option(package_name="fwledger")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, rpc: str | None, key_file: Path | None) -> None:
    """fwledger: secure firmware updates on a distributed ledger (ITU-T X.1368, Appendix II)."""
    obj = ctx.ensure_object(Ctx)  # type: ignore[call-arg]
    obj.flags = {"home": home, "rpc": rpc, "key_file": key_file}


def _ctx() -> Ctx:
    return click.get_current_context().find_object(Ctx)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- chain

@cli.group()
def chain() -> None:
    """Deploy the release registry and inspect it."""


@chain.command("deploy")
@click.option("--admin", "admins", multiple=True, type=ADDRESS,
              help="Administrator address (repeat); default: the signing key's address.")
@click.option("--threshold", type=click.IntRange(min=1), default=1, show_default=True,
              help="k: approvals an administrative change needs.")
@click.option("--force", is_flag=True, help="Deploy even if this home already has a registry on this chain.")
@json_option
def chain_deploy(admins: tuple[str, ...], threshold: int, force: bool) -> None:
    """Compile contracts/ReleaseRegistry.vy and deploy it; record it in the home."""
    from ledger_node.registry import Registry, deploy, deployment_path, save_deployment

    c = _ctx()
    w3 = c.w3()
    if not force and deployment_path(c.settings.home, int(w3.eth.chain_id)).exists():
        try:
            existing = Registry(w3, c.deployment())
        except ConfigError:
            existing = None
        if existing is not None:
            raise ConfigError(f"a registry is already deployed at {existing.address} on chain "
                              f"{existing.deployment.chain_id}; pass --force to deploy another")
    account = load_key(c.settings.signing_key_file())
    dep = deploy(w3, account, list(admins) or None, threshold, timeout=c.settings.timeout)
    path = save_deployment(c.settings.home, dep)
    out = {"address": dep.address, "chain_id": dep.chain_id, "block": dep.block, "tx": dep.tx,
           "code_hash": dep.code_hash, "record": str(path)}
    emit(out, lambda: out_console.print(
        f"registry deployed at [bold]{dep.address}[/] on chain {dep.chain_id}, block {dep.block}\n"
        f"deployment record: {path}"))


@chain.command("info")
@json_option
def chain_info() -> None:
    """Show the deployment, the chain head and the registry's administration."""
    c = _ctx()
    reg = c.registry()
    dep = reg.deployment
    out = {"address": dep.address, "chain_id": dep.chain_id, "block": dep.block, "code_hash": dep.code_hash,
           "rpc": c.settings.rpc, "head_block": reg.block_number(), "threshold": reg.threshold(),
           "admin_count": reg.admin_count()}
    emit(out, lambda: _kv_table("registry", out))


def _kv_table(title: str, obj: dict[str, Any]) -> None:
    t = Table(title=title, show_header=False)
    for k, v in obj.items():
        t.add_row(k, str(v))
    out_console.print(t)


# ----------------------------------------------------------------------------- admin

@cli.group()
def admin() -> None:
    """Administrative changes (each takes effect once k of n administrators approve it)."""


def _admin_cmd(res: Any, what: str) -> None:
    emit(res.to_json() | {"action": what}, _admin_human(what)(res))


@admin.command("add-vendor")
@click.option("--name", required=True, help="Vendor name records must carry.")
@click.option("--address", required=True, type=ADDRESS, help="Vendor's signing address.")
@json_option
def admin_add_vendor(name: str, address: str) -> None:
    """Register a vendor (author)."""
    _admin_cmd(_ctx().registry(signer=True).add_vendor(address, name), f"add vendor {name} at {address}")


@admin.command("revoke-vendor")
@click.option("--address", required=True, type=ADDRESS)
@json_option
def admin_revoke_vendor(address: str) -> None:
    """Revoke a vendor: it can publish nothing more."""
    _admin_cmd(_ctx().registry(signer=True).revoke_vendor(address), f"revoke vendor {address}")


@admin.command("rotate-vendor")
@click.option("--old", required=True, type=ADDRESS)
@click.option("--new", required=True, type=ADDRESS)
@json_option
def admin_rotate_vendor(old: str, new: str) -> None:
    """Move a vendor to a new key; the old one is refused from then on."""
    _admin_cmd(_ctx().registry(signer=True).rotate_vendor(old, new), f"rotate vendor {old} -> {new}")


@admin.command("add-hardware")
@click.option("--id", "hw_id", required=True, help="Hardware class id.")
@click.option("--revision", required=True, type=click.IntRange(min=0))
@click.option("--enc-key", required=True, type=HASH32, help="The class's X25519 public key (32 bytes hex).")
@json_option
def admin_add_hardware(hw_id: str, revision: int, enc_key: bytes) -> None:
    """Register a hardware class and its encryption key."""
    _admin_cmd(_ctx().registry(signer=True).add_hardware(hw_id, revision, enc_key),
               f"add hardware class {hw_id} rev {revision}")


@admin.command("set-policy")
@click.option("--hardware", "hw_id", required=True, help="Hardware class id.")
@click.option("--vendor", "vendor_name", required=True, help="Product line's vendor name.")
@click.option("--product", required=True, help="Product line name.")
@click.option("--deny", is_flag=True, help="Forbid the product line on this class.")
@click.option("--min", "min_version", type=VERSION, default=None, help="Lowest allowed version.")
@click.option("--max", "max_version", type=VERSION, default=None, help="Highest allowed version.")
@json_option
def admin_set_policy(hw_id: str, vendor_name: str, product: str, deny: bool,
                     min_version: Version | None, max_version: Version | None) -> None:
    """Write the update policy of a hardware class for a product line."""
    res = _ctx().registry(signer=True).set_policy(hw_id, vendor_name, product, allowed=not deny,
                                                   min_version=min_version, max_version=max_version)
    _admin_cmd(res, f"policy {hw_id} / {vendor_name}/{product}")


@admin.command("add-admin")
@click.option("--address", required=True, type=ADDRESS)
@json_option
def admin_add_admin(address: str) -> None:
    """Add an administrator."""
    _admin_cmd(_ctx().registry(signer=True).add_admin(address), f"add administrator {address}")


@admin.command("remove-admin")
@click.option("--address", required=True, type=ADDRESS)
@json_option
def admin_remove_admin(address: str) -> None:
    """Remove an administrator."""
    _admin_cmd(_ctx().registry(signer=True).remove_admin(address), f"remove administrator {address}")


@admin.command("set-threshold")
@click.argument("k", type=click.IntRange(min=1))
@json_option
def admin_set_threshold(k: int) -> None:
    """Change k, the approvals a change needs."""
    _admin_cmd(_ctx().registry(signer=True).set_threshold(k), f"threshold {k}")


# ----------------------------------------------------------------------------- node

@cli.group()
def node() -> None:
    """The full node: follow the registry's events into the local index."""


@node.command("sync")
@click.option("--follow", is_flag=True, help="Keep following the chain until interrupted.")
@click.option("--interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True)
@json_option
def node_sync(follow: bool, interval: float) -> None:
    """Ingest registry events up to head - confirmations."""
    c = _ctx()
    fn = c.fullnode()
    if follow:
        stop = threading.Event()
        try:
            fn.follow(stop, interval=interval, progress=_progress_line, on_rollback=_progress_line)
        except KeyboardInterrupt:
            stop.set()
        return
    report = fn.sync_once(progress=None if c.json_out else _progress_line,
                          on_rollback=None if c.json_out else _progress_line)
    out = report.to_json()
    emit(out, lambda: out_console.print(
        f"index at block {max(out['to_block'], out['from_block'] - 1)}: {out['events']} new events, "
        f"{out['releases']} releases, {out['flagged']} flagged"
        + (f" (rolled back from block {out['rolled_back_from']} to {out['rolled_back_to']}: "
           f"{out['events_removed']} events removed)" if report.rolled_back else "")))


def _progress_line(progress: Any) -> None:
    err_console.print(progress.line())


# ----------------------------------------------------------------------------- release

@cli.group()
def release() -> None:
    """Release records on the ledger."""


def _synced_node() -> Any:
    fn = _ctx().fullnode()
    fn.sync_once()
    return fn


def _release_row(r: Any) -> dict[str, Any]:
    return r.to_json()


@release.command("list")
@click.option("--product", default=None)
@click.option("--vendor", default=None)
@click.option("--all", "include_flagged", is_flag=True, help="Include records flagged by the full node.")
@json_option
def release_list(product: str | None, vendor: str | None, include_flagged: bool) -> None:
    """List published releases (the full node syncs first)."""
    fn = _synced_node()
    rows = [_release_row(r) for r in fn.index.releases(product=product, vendor=vendor, include_flagged=include_flagged)]

    def human() -> None:
        t = Table(title=f"releases ({len(rows)})")
        for col in ("vendor", "product", "version", "header hash", "block", "status"):
            t.add_column(col)
        for r in rows:
            status = ", ".join(flag for flag in ("revoked", "vulnerable", "flagged", "head") if r.get(flag)) or "-"
            t.add_row(r["vendor_name"], r["product"], r["version"], r["header_hash"][:18] + "...",
                      str(r.get("block", "")), status)
        out_console.print(t)

    emit(rows, human)


def _find_release(header_hash: bytes) -> Any:
    fn = _synced_node()
    rel = fn.index.release(header_hash)
    if rel is None:
        raise ConfigError(f"no release 0x{header_hash.hex()} in the registry's index")
    return rel


@release.command("show")
@click.argument("header_hash", type=HASH32)
@json_option
def release_show(header_hash: bytes) -> None:
    """Show one release record (Table II.1) and its status."""
    row = _release_row(_find_release(header_hash))
    emit(row, lambda: _kv_table("release", row))


@release.command("revoke")
@click.argument("header_hash", type=HASH32)
@click.option("--reason", required=True, help="Why, in words.")
@json_option
def release_revoke(header_hash: bytes, reason: str) -> None:
    """Revoke a release (its vendor at once, or the administration k of n)."""
    rel = _find_release(header_hash)
    d = rel.record.data
    res = _ctx().registry(signer=True).revoke(d.vendor_name, d.product, header_hash, reason)
    _admin_cmd(res, f"revoke {d.vendor_name}/{d.product} {d.version}")


@release.command("mark-vulnerable")
@click.argument("header_hash", type=HASH32)
@click.option("--note", default="", help="Advisory (CVE id...).")
@json_option
def release_mark_vulnerable(header_hash: bytes, note: str) -> None:
    """Flag a release as vulnerable (R10.b.ii)."""
    rel = _find_release(header_hash)
    d = rel.record.data
    res = _ctx().registry(signer=True).mark_vulnerable(d.vendor_name, d.product, header_hash, note)
    _admin_cmd(res, f"mark vulnerable {d.vendor_name}/{d.product} {d.version}")


@release.command("publish")
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--vendor", "vendor_name", required=True, help="The signing key's registered vendor name.")
@click.option("--product", required=True)
@click.option("--version", "version", required=True, type=VERSION)
@click.option("--hardware", "hardware", multiple=True, required=True, help="Supported hardware class (repeat).")
@click.option("--depends", "depends", multiple=True, help="'PRODUCT>=1.2.0,<2.0.0' (repeat).")
@click.option("--link", required=True, help="Where devices fetch the image.")
@json_option
def release_publish(image: Path, vendor_name: str, product: str, version: Version, hardware: tuple[str, ...],
                    depends: tuple[str, ...], link: str) -> None:
    """Publish a release record for IMAGE directly on the ledger (no bundle, no encryption).

    The author's signed and encrypted bundles (fwledger author build/publish) build on this.
    """
    from ledger_node.merkle import merkle_root_of_file

    file_hash = hashlib.sha256()
    size = 0
    with open(image, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            file_hash.update(chunk)
            size += len(chunk)
    fn = _synced_node()
    head = fn.index.head(vendor_name, product)
    prev = head.header_hash if head is not None else ZERO_HASH
    record = ReleaseRecord(prev_hash=prev, data=ReleaseData(
        merkle_root=merkle_root_of_file(image), vendor_name=vendor_name, publish_time=0, product=product,
        version=version, file_hash=file_hash.digest(), file_link=link, file_name=image.name, file_size=size,
        supported_hardware=tuple(hardware), dependencies=dependencies_from_texts(depends)))
    res = _ctx().registry(signer=True).publish(record)
    out = res.to_json()
    emit(out, lambda: out_console.print(
        f"published {vendor_name}/{product} {version}: header hash [bold]{out['header_hash']}[/] "
        f"(block {res.block}, {res.gas_used} gas)"))


# ----------------------------------------------------------------------------- devnet

@cli.group()
def devnet() -> None:
    """A local anvil node with its state kept in the home."""


@devnet.command("start")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port on 127.0.0.1 [8545].")
@click.option("--block-time", type=click.FloatRange(min=0, min_open=True, max=3600), default=None,
              help="Also mine a block every SECONDS (keeps the head fresh for devices' maximum header age) "
                   "[none: a block per transaction only].")
@json_option
def devnet_start(port: int | None, block_time: float | None) -> None:
    """Start anvil in the background; write its development keys to <home>/keys."""
    from ledger_node import devnet as dn
    from ledger_node.fsutil import atomic_write_bytes
    from ledger_node.providers import mnemonic_keys

    s = _ctx().settings
    info = dn.start(s.home, port or s.devnet_port, block_time=block_time)
    keys_dir = s.keys_dir
    for i, key in enumerate(mnemonic_keys(10)):
        atomic_write_bytes(keys_dir / f"devnet-{i}.key", ("0x" + key.hex() + "\n").encode(), mode=0o600)
    if not (keys_dir / "admin.key").exists():
        atomic_write_bytes(keys_dir / "admin.key", ("0x" + mnemonic_keys(1)[0].hex() + "\n").encode(), mode=0o600)
    out = info.to_dict() | {"keys": str(keys_dir)}
    emit(out, lambda: out_console.print(
        f"anvil running at [bold]{info.url}[/] (pid {info.pid}); development keys in {keys_dir}\n"
        f"next: fwledger --rpc {info.url} chain deploy"))


@devnet.command("stop")
@json_option
def devnet_stop() -> None:
    """Stop the home's anvil (its state is kept for the next start)."""
    from ledger_node import devnet as dn

    stopped = dn.stop(_ctx().settings.home)
    emit({"stopped": stopped}, lambda: out_console.print("stopped" if stopped else "no devnet was running"))


@devnet.command("status")
@json_option
def devnet_status() -> None:
    """Is the home's anvil running, where, at which block."""
    from ledger_node import devnet as dn

    info = dn.status(_ctx().settings.home)
    out = {"running": info is not None} | (info.to_dict() if info is not None else {})
    emit(out, lambda: out_console.print(f"running at {info.url} (pid {info.pid})" if info else "not running"))


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
    trackers, failures and their causes, for a flat or a hierarchical tracker tree."""
    from .simulate import run_simulation

    try:
        shares = tuple(float(w) for w in waves.split(","))
    except ValueError:
        raise click.BadParameter(f"{waves!r} is not a comma-separated list of shares", param_hint="--waves") from None
    report = run_simulation(devices=devices, depth=depth, fanout=fanout, image_size=image_kib * 1024,
                            fail_rate=fail_rate, waves=shares, quiet=_ctx().json_out, console=err_console)
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
    from .stack import dashboard_login_url, up

    c = _ctx()
    rec = up(c.settings.home, devices=devices, port_base=port_base, block_time=block_time,
             device_interval=device_interval, timeout=timeout, tls=tls,
             progress=None if c.json_out else (lambda msg: err_console.print(msg, markup=False)))

    def human() -> None:
        stack_dir = Path(rec["home"]) / "stack"
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
        login = dashboard_login_url(rec)
        if login:  # the operator's token rides in the fragment; stack.json holds only the command
            out_console.print(f"fleet dashboard (operator login): {login}", markup=False, soft_wrap=True)
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


# ----------------------------------------------------------------------------- author

@cli.group()
def author() -> None:
    """The author: vendor key, signed and encrypted bundles, upload and publish (X.1368 P1, C11.4)."""


_PASSPHRASE_FILE = click.option(
    "--passphrase-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
    help="File whose first line is the keystore passphrase [else env FWLEDGER_PASSPHRASE, else a prompt].")


def _author_passphrase(passphrase_file: Path | None, *, confirm: bool) -> str:
    from .author.keys import PASSPHRASE_ENV, read_passphrase_file

    if passphrase_file is not None:
        return read_passphrase_file(passphrase_file)
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV]
    return str(click.prompt("Keystore passphrase", hide_input=True, confirmation_prompt=confirm, err=True))


def _author_account(passphrase_file: Path | None) -> Any:
    from .author.keys import is_keystore, load_vendor_key

    path = _ctx().settings.signing_key_file()
    if is_keystore(path):
        return load_vendor_key(path, _author_passphrase(passphrase_file, confirm=False))
    return load_key(path)


@author.command("keygen")
@click.option("--name", required=True, help="Key name: the keystore is <home>/keys/<name>.json.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the keystore here instead.")
@_PASSPHRASE_FILE
@json_option
def author_keygen(name: str, out: Path | None, passphrase_file: Path | None) -> None:
    """Create a new vendor key in an encrypted keystore (never overwrites one)."""
    from .author.keys import create_keystore, keystore_path

    path = keystore_path(_ctx().settings.home, name) if out is None else out
    if path.exists():
        raise ConfigError(f"{path} already exists: refusing to overwrite a key")
    key = create_keystore(path, _author_passphrase(passphrase_file, confirm=True))
    emit(key.to_json(), lambda: out_console.print(
        f"vendor key [bold]{key.address}[/] in {key.keystore}\n"
        f"next: an administrator runs 'fwledger admin add-vendor --name NAME --address {key.address}'"))


@author.command("build")
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--vendor", "vendor_name", default=None, help="Vendor name [the signing key's name on the ledger].")
@click.option("--product", required=True)
@click.option("--version", "version", required=True, type=VERSION)
@click.option("--hardware", "hardware", multiple=True, required=True, help="Supported hardware class (repeat).")
@click.option("--depends", "depends", multiple=True, help="'PRODUCT>=1.2.0,<2.0.0' (repeat).")
@click.option("--link", required=True, help="Where devices fetch the image.")
@click.option("--file-name", default=None, help="The record's file name [the image's name].")
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Bundle file to write.")
@_PASSPHRASE_FILE
@json_option
def author_build(image: Path, vendor_name: str | None, product: str, version: Version, hardware: tuple[str, ...],
                 depends: tuple[str, ...], link: str, file_name: str | None, output: Path,
                 passphrase_file: Path | None) -> None:
    """Encrypt IMAGE for the hardware classes' ledger keys and sign its record into a bundle (R10.f.i)."""
    from .author.ledger import gather_inputs
    from .bundle import build_bundle, release_digest

    account = _author_account(passphrase_file)
    fn = _synced_node()
    reg = _ctx().registry()
    inputs = gather_inputs(reg, fn.index, account.address, vendor_name=vendor_name, product=product,
                           version=version, hardware=hardware)
    header = build_bundle(image, output, vendor_name=inputs.vendor_name, product=product, version=version,
                          link=link, hardware=hardware, class_keys=inputs.class_keys,
                          dependencies=dependencies_from_texts(depends), prev_hash=inputs.prev_hash,
                          account=account, chain_id=inputs.chain_id, registry=inputs.registry, file_name=file_name)
    d = header.record.data
    out = {"bundle": str(output), "vendor": d.vendor_name, "product": d.product, "version": str(d.version),
           "prev_hash": "0x" + header.record.prev_hash.hex(),
           "digest": "0x" + release_digest(header, inputs.chain_id, inputs.registry).hex(),
           "signer": account.address, "hardware": list(d.supported_hardware),
           "plaintext_size": header.encryption.plaintext_size, "file_size": d.file_size,
           "file_hash": "0x" + d.file_hash.hex(), "merkle_root": "0x" + d.merkle_root.hex(),
           "chain_id": inputs.chain_id, "registry": inputs.registry}
    emit(out, lambda: out_console.print(
        f"bundle [bold]{output}[/]: {d.vendor_name}/{d.product} {d.version} for {', '.join(d.supported_hardware)} "
        f"({d.file_size} bytes encrypted), digest {out['digest']}\n"
        f"next: fwledger author publish {output} --server URL"))


@author.command("publish")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--server", "servers", multiple=True, required=True, help="Firmware server base URL (repeat).")
@_PASSPHRASE_FILE
@json_option
def author_publish(bundle: Path, servers: tuple[str, ...], passphrase_file: Path | None) -> None:
    """Upload BUNDLE to every server, then publish its record on the ledger (P1); no upload, no record.
    HTTPS servers are checked against FWLEDGER_TLS_CA (with FWLEDGER_TLS_CERT/KEY as the client's)."""
    import requests

    from .author.publish import publish_bundle

    account = _author_account(passphrase_file)
    c = _ctx()
    with requests.Session() as session:
        _client_tls(session)
        res = publish_bundle(bundle, servers, c.registry().with_account(account), timeout=c.settings.timeout,
                             session=session)
    out = res.to_json()
    emit(out, lambda: out_console.print(
        f"uploaded to {len(res.servers)} server(s); published header hash [bold]{out['header_hash']}[/] "
        f"(block {res.block}, tx {res.tx})"))


# ----------------------------------------------------------------------------- fleet CA (mutual TLS)

@cli.group()
def fleet() -> None:
    """The fleet: device admission (admit, import, pending, accept, decommission...) and the CAs
    (mutual TLS between tracker modules, docs/MODULES.md 5; manufacturer certificates)."""


@fleet.command("ca-init")
@click.option("--dir", "ca_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for ca.crt and ca.key [<home>/fleet-ca].")
@click.option("--name", default="fwledger fleet CA", show_default=True,
              help="The CA's subject name (e.g. 'acme manufacturing CA' for a manufacturer CA: fleet certify).")
@json_option
def fleet_ca_init(ca_dir: Path | None, name: str) -> None:
    """Create a CA (ECDSA P-256, self-signed, 10 years; the key 0600): the fleet CA of the modules'
    TLS, or a manufacturer CA for device certificates (fleet certify)."""
    from .fleet_ca import init_ca

    folder = ca_dir or _ctx().settings.home / "fleet-ca"
    issued = init_ca(folder, name=name)
    info = {"cert": str(issued.cert), "key": str(issued.key), "subject": issued.subject,
            "not_after": issued.not_after.isoformat()}
    emit(info, lambda: err_console.print(f"fleet CA {issued.subject} in {folder}"))


@fleet.command("issue")
@click.option("--name", required=True, help="Certificate name: writes NAME.crt and NAME.key.")
@click.option("--role", type=click.Choice(["server", "intermediate", "client", "firmware-server", "device"]),
              required=True, help="The holder's role (in the certificate's OU): a tracker module, an operator "
                                  "(client), a firmware server or a device.")
@click.option("--host", "hosts", multiple=True, default=("127.0.0.1",), show_default=True,
              help="IP address or DNS name the module is reached at (repeat).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for NAME.crt and NAME.key.")
@click.option("--ca-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The fleet CA's folder [<home>/fleet-ca].")
@json_option
def fleet_issue(name: str, role: str, hosts: tuple[str, ...], out_dir: Path, ca_dir: Path | None) -> None:
    """Issue a module certificate signed by the fleet CA (1 year, EKU serverAuth + clientAuth)."""
    from .fleet_ca import issue_certificate

    issued = issue_certificate(ca_dir or _ctx().settings.home / "fleet-ca", name, role, hosts, out_dir)
    info = {"cert": str(issued.cert), "key": str(issued.key), "subject": issued.subject,
            "not_after": issued.not_after.isoformat(), "hosts": list(hosts)}
    emit(info, lambda: err_console.print(f"{issued.subject}: {issued.cert}, {issued.key}"))


# ----------------------------------------------------------------------------- status tracker

@cli.group()
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

    from .http_auth import sign_request, verify_response
    from .service_identity import IdentityError, fetch_identity

    c = _ctx()
    account = load_key(c.settings.signing_key_file())
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


# command groups kept in their own modules register themselves on import
from . import admission_cli, anchors_cli, device_cli, server_cli, tracker_cli  # noqa: E402, F401


def main() -> None:
    cli(prog_name="fwledger")


if __name__ == "__main__":  # python -m entities.cli: run the package's module, where admission_cli registered
    from entities.cli import main as _main

    _main()
