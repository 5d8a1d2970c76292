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


# ----------------------------------------------------------------------------- firmware server

@cli.group()
def server() -> None:
    """The firmware server: untrusted storage that still protects devices (X.1368 C11.3)."""


@server.command("run")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data folder (objects, temp files, databases) [env FWLEDGER_SERVER_DATA; <home>/server].")
@click.option("--max-upload", "max_upload_bytes", type=click.IntRange(min=1), default=None,
              help="Largest bundle accepted, bytes [env FWLEDGER_SERVER_MAX_UPLOAD; 1 GiB].")
@click.option("--max-total", "max_total_bytes", type=click.IntRange(min=1), default=None,
              help="Largest total of stored payloads, bytes [env FWLEDGER_SERVER_MAX_TOTAL; 20 GiB].")
@click.option("--poll-interval", type=click.FloatRange(min=0.01), default=None,
              help="Seconds between ledger syncs [env FWLEDGER_SERVER_POLL; 1.0].")
@click.option("--notify", "notify", multiple=True,
              help="Tracker notification URL for new releases, T9.b (repeat) [env FWLEDGER_SERVER_NOTIFY].")
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), envvar="FWLEDGER_SERVER_TLS_CERT",
              default=None, help="Serve HTTPS with this certificate (fwledger fleet issue --role firmware-server) "
                                 "[env FWLEDGER_SERVER_TLS_CERT]; without TLS the server listens on loopback only.")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), envvar="FWLEDGER_SERVER_TLS_KEY",
              default=None, help="Its private key [env FWLEDGER_SERVER_TLS_KEY].")
@click.option("--tls-ca", type=click.Path(dir_okay=False, path_type=Path), envvar="FWLEDGER_SERVER_TLS_CA",
              default=None, help="The fleet CA client certificates must chain to [env FWLEDGER_SERVER_TLS_CA].")
@click.option("--tls-client", type=click.Choice(["optional", "required"]), default="optional", show_default=True,
              help="'required': only clients with a fleet certificate (devices given one, vendors, operators).")
@_admission_options("SERVER", "else the home's signing key")
@json_option
def server_run(host: str, port: int, data_dir: Path | None, max_upload_bytes: int | None,
               max_total_bytes: int | None, poll_interval: float | None, notify: tuple[str, ...],
               tls_cert: Path | None, tls_key: Path | None, tls_ca: Path | None, tls_client: str,
               admission: str | None, operator_keys: tuple[str, ...], manufacturer_cas: tuple[Path, ...]) -> None:
    """Serve firmware over HTTP(S) until SIGINT/SIGTERM; OpenAPI at /openapi.json."""
    from .asgi import ServerTLS
    from .firmware_server.config import load_server_config
    from .firmware_server.runner import build_app, check_listen, serve

    c = _ctx()
    given = [p for p in (tls_cert, tls_key, tls_ca) if p is not None]
    if given and len(given) != 3:
        raise click.UsageError("--tls-cert, --tls-key and --tls-ca go together")
    tls = ServerTLS(tls_cert, tls_key, tls_ca, tls_client == "required") if tls_cert and tls_key and tls_ca else None
    check_listen(host, port, tls)
    cfg = load_server_config(c.settings.home, data_dir=data_dir, max_upload_bytes=max_upload_bytes,
                             max_total_bytes=max_total_bytes, poll_interval=poll_interval,
                             tracker_notify_urls=list(notify) or None, admission=admission,
                             operator_keys=list(operator_keys) or None, manufacturer_cas=list(manufacturer_cas) or None)
    if not cfg.operator_keys:
        from dataclasses import replace

        try:
            cfg = replace(cfg, operator_keys=(load_key(c.settings.signing_key_file()).address,))
        except ConfigError:
            pass  # no operator key: admission records are refused (unknown_operator)
    app = build_app(cfg, c.w3(), c.deployment(), confirmations=c.settings.confirmations,
                    batch_blocks=c.settings.batch_blocks)
    info = {"url": f"{'https' if tls else 'http'}://{host}:{port}", "pid": os.getpid(), "data": str(cfg.data_dir),
            "admin_token_file": None if cfg.admin_token else str(cfg.data_dir / "admin.token"),
            "registry": app.state.service.ledger.registry, "admission": cfg.admission,
            "operator_keys": list(cfg.operator_keys)}
    emit(info, lambda: err_console.print(f"firmware server on {info['url']} (pid {info['pid']}), data {cfg.data_dir}"))
    sys.stdout.flush()
    serve(app, host, port, tls=tls)


def _server_admin(url: str, token: str | None, data_dir: Path | None, method: str, path: str,
                  body: Any = None) -> Any:
    """One operator request to a firmware server (``Authorization: Bearer``); the token is
    ``--token`` / FWLEDGER_SERVER_TOKEN, else the server's config, else ``<data>/admin.token``
    (a server on this machine). Refusals become one-line errors."""
    import requests

    if not token:
        from .firmware_server.config import load_server_config

        cfg = load_server_config(_ctx().settings.home, data_dir=data_dir)
        path_file = cfg.data_dir / "admin.token"
        if cfg.admin_token:
            token = cfg.admin_token
        elif path_file.is_file():
            token = path_file.read_text().strip()
        else:
            raise ConfigError(f"no operator token: give --token (or FWLEDGER_SERVER_TOKEN); no {path_file}")
    try:
        resp = requests.request(method, url.rstrip("/") + path, json=body, timeout=30,
                                headers={"Authorization": f"Bearer {token}"})
    except requests.RequestException as exc:
        raise FwledgerError(f"cannot reach the firmware server at {url}: {type(exc).__name__}") from exc
    try:
        obj = resp.json()
    except ValueError as exc:
        raise FwledgerError(f"the firmware server answered {resp.status_code} with no JSON") from exc
    if resp.status_code >= 400:
        err = obj.get("error", {}) if isinstance(obj, dict) else {}
        raise FwledgerError(f"firmware server refused ({resp.status_code} {err.get('code', '?')}): "
                            f"{err.get('message', '')}")
    return obj


@server.command("unbar")
@click.argument("name")
@click.option("--reason", required=True, help="Why the bar is lifted (printable, up to 256 characters; logged).")
@click.option("--server", "server_url", envvar="FWLEDGER_SERVER", default="http://127.0.0.1:8080",
              show_default=True, help="Firmware server base URL [env FWLEDGER_SERVER].")
@click.option("--token", envvar="FWLEDGER_SERVER_TOKEN", default=None,
              help="Operator token [env FWLEDGER_SERVER_TOKEN; else the server config's, else <data>/admin.token].")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The server's data folder, to read admin.token from [env FWLEDGER_SERVER_DATA; <home>/server].")
@json_option
def server_unbar(name: str, reason: str, server_url: str, token: str | None, data_dir: Path | None) -> None:
    """Lift the firmware server's bar of vendor NAME (C11.3.c), for a reason it logs and keeps.

    Refused for a vendor revoked on the ledger (vendor_revoked) or not barred (not_barred)."""
    from urllib.parse import quote

    out = _server_admin(server_url, token, data_dir, "POST", f"/v1/admin/vendors/{quote(name, safe='')}/unbar",
                        {"reason": reason})
    emit(out, lambda: err_console.print(f"vendor {name}: bar lifted ({out['lifted'].get('reason')}); "
                                        f"reason logged: {reason}"))


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


@tracker.command("run")
@click.option("--role", type=click.Choice(["server", "intermediate", "client"]), default="server", show_default=True,
              help="Deployment role (clause 8): 'server' (full node) or 'intermediate' (relay and cache, "
                   "--upstream); 'client' runs inside a device.")
@click.option("--listen", default="127.0.0.1:8470", show_default=True, help="HOST:PORT (loopback).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data folder (index, inventory, identity key) [env FWLEDGER_TRACKER_DATA; <home>/tracker].")
@click.option("--identity", "identity_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The tracker's own key file [<data>/tracker.key, created if missing].")
@click.option("--poll-interval", type=click.FloatRange(min=0.01), default=None,
              help="Seconds between ledger polls, T9.d [env FWLEDGER_TRACKER_POLL; 1.0].")
@click.option("--admin-key", "admin_keys", multiple=True, type=ADDRESS,
              help="Administrator address: T9.c triggers and inventory reads (repeat) "
                   "[env FWLEDGER_TRACKER_ADMINS; else the home's signing key].")
@click.option("--server-key", "server_keys", multiple=True, type=ADDRESS,
              help="Trusted firmware server address for T9.b triggers (repeat) [env FWLEDGER_TRACKER_SERVERS].")
@click.option("--module-key", "module_keys", multiple=True, type=ADDRESS,
              help="A lower module's (intermediate's) address whose module heartbeats are accepted (repeat); "
                   "others are refused unknown_module [env FWLEDGER_TRACKER_MODULE_KEYS].")
@click.option("--upstream", "upstreams", multiple=True,
              help="Intermediate: the upstream module's URL (repeat for fail-over) [env FWLEDGER_TRACKER_UPSTREAMS].")
@click.option("--upstream-key", "upstream_keys", multiple=True, type=ADDRESS,
              help="Intermediate: the upstream's signing address, one per --upstream (C11.2.d) "
                   "[env FWLEDGER_TRACKER_UPSTREAM_KEYS].")
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="This module's fleet certificate: serve HTTPS [env FWLEDGER_TRACKER_TLS_CERT].")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Its private key [env FWLEDGER_TRACKER_TLS_KEY].")
@click.option("--tls-ca", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The fleet CA certificate peers must chain to [env FWLEDGER_TRACKER_TLS_CA].")
@click.option("--tls-client", type=click.Choice(["required", "optional"]), default=None,
              help="With TLS: 'required' refuses clients without a fleet certificate (modules, operators, "
                   "devices given one); 'optional' lets devices in on the pinned CA and their signed requests "
                   "[env FWLEDGER_TRACKER_TLS_REQUIRE_CLIENT; required].")
@click.option("--public-url", default=None,
              help="Intermediate: the URL lower modules reach it at, for its module heartbeats [from --listen].")
@click.option("--serve-http", is_flag=True,
              help="Intermediate: serve plain HTTP to the devices below while the TLS files still secure the "
                   "upstream connection (mutual TLS); devices' requests and its answers are signed (MODULES.md 5).")
@_admission_options("TRACKER", "else the administrator keys")
@json_option
def tracker_run(role: str, listen: str, data_dir: Path | None, identity_file: Path | None,
                poll_interval: float | None, admin_keys: tuple[str, ...], server_keys: tuple[str, ...],
                module_keys: tuple[str, ...], upstreams: tuple[str, ...], upstream_keys: tuple[str, ...],
                tls_cert: Path | None, tls_key: Path | None, tls_ca: Path | None, tls_client: str | None,
                public_url: str | None, serve_http: bool, admission: str | None, operator_keys: tuple[str, ...],
                manufacturer_cas: tuple[Path, ...]) -> None:
    """Run the tracker's server module over HTTP until SIGINT/SIGTERM; OpenAPI at /openapi.json."""
    from .status_tracker.app import build_tracker, check_listen, create_app, serve
    from .status_tracker.config import load_tracker_config, parse_listen
    from .status_tracker.modules import server_tls

    c = _ctx()
    require_client = None if tls_client is None else tls_client == "required"
    if serve_http and role != "intermediate":
        raise click.UsageError("--serve-http goes with --role intermediate")
    if role == "intermediate":
        _tracker_run_intermediate(listen, public_url, serve_http, data_dir=data_dir, identity_file=identity_file,
                                  poll_interval=poll_interval, admin_keys=admin_keys, module_keys=module_keys,
                                  upstreams=upstreams, upstream_keys=upstream_keys, tls_cert=tls_cert,
                                  tls_key=tls_key, tls_ca=tls_ca, tls_require_client=require_client)
        return
    if role != "server":
        raise ConfigError(f"tracker role {role!r} is not built yet: only 'server' and 'intermediate' run")
    host, port = parse_listen(listen)
    cfg = load_tracker_config(c.settings.home, role=role, data_dir=data_dir, identity_file=identity_file,
                              poll_interval=poll_interval, admin_keys=admin_keys, server_keys=server_keys,
                              module_keys=module_keys, tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca,
                              tls_require_client=require_client, admission=admission, operator_keys=operator_keys,
                              manufacturer_cas=manufacturer_cas)
    tls = server_tls(cfg)
    check_listen(host, port, tls)
    if not cfg.admin_keys:
        try:
            from dataclasses import replace

            home_key = load_key(c.settings.signing_key_file()).address
            cfg = replace(cfg, admin_keys=(home_key,), operator_keys=cfg.operator_keys or (home_key,))
        except ConfigError:
            pass  # no administrator: operator reads are refused
    trk = build_tracker(cfg, c.trusted_w3(), c.deployment(), confirmations=c.settings.confirmations,
                        batch_blocks=c.settings.batch_blocks)
    app = create_app(trk, listen=(host, port))
    info = {"url": f"{'https' if tls else 'http'}://{host}:{port}", "pid": os.getpid(), "role": role,
            "address": trk.address, "dashboard_token_file": str(cfg.dashboard_token_path),
            "data": str(cfg.data_dir), "registry": trk.registry, "chain_id": trk.chain_id,
            "admin_keys": list(cfg.admin_keys), "server_keys": list(cfg.server_keys),
            "admission": cfg.admission, "operator_keys": list(cfg.operator_keys)}
    emit(info, lambda: err_console.print(f"status tracker {trk.address} on {info['url']} (pid {info['pid']}), "
                                         f"data {cfg.data_dir}; dashboard login: fwledger tracker dashboard-url"))
    sys.stdout.flush()
    serve(app, host, port, tls=tls)


@tracker.command("dashboard-url")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The tracker's data folder [env FWLEDGER_TRACKER_DATA; <home>/tracker].")
@click.option("--url", "--tracker", "url", envvar="FWLEDGER_TRACKER", default="http://127.0.0.1:8470",
              show_default=True, help="The tracker's address as the browser reaches it [env FWLEDGER_TRACKER].")
@json_option
def tracker_dashboard_url(data_dir: Path | None, url: str) -> None:
    """The operator's dashboard login address, URL/dashboard/login#TOKEN: the token (the tracker's
    dashboard.token, made on its first start) rides in the fragment, which browsers never send."""
    from .status_tracker.config import load_tracker_config
    from .status_tracker.dashboard import load_or_create_token, login_url

    if not url.startswith(("http://", "https://")):
        raise click.UsageError(f"--url must be an http(s) URL, not {url!r}")
    cfg = load_tracker_config(_ctx().settings.home, data_dir=data_dir)
    link = login_url(url, load_or_create_token(cfg.dashboard_token_path, create=False))
    emit({"url": link, "dashboard": url.rstrip("/") + "/dashboard", "token_file": str(cfg.dashboard_token_path)},
         lambda: click.echo(link))


def _tracker_run_intermediate(listen: str, public_url: str | None, serve_http: bool, **flags: Any) -> None:
    """``tracker run --role intermediate``: no chain; relays and caches for the devices below (MODULES.md 6).
    ``serve_http``: plain HTTP downstream even with TLS files (they then secure the upstream only)."""
    from .status_tracker.app import check_listen, serve
    from .status_tracker.config import load_tracker_config, parse_listen
    from .status_tracker.intermediate import build_intermediate, create_intermediate_app
    from .status_tracker.modules import server_tls

    c = _ctx()
    host, port = parse_listen(listen)
    cfg = load_tracker_config(c.settings.home, role="intermediate", **flags)
    tls = None if serve_http else server_tls(cfg)
    check_listen(host, port, tls)
    url = public_url or f"{'https' if tls else 'http'}://{host}:{port}"
    module = build_intermediate(cfg, url=url)
    app = create_intermediate_app(module)
    info = {"url": url, "pid": os.getpid(), "role": "intermediate", "address": module.address,
            "data": str(cfg.data_dir), "upstreams": list(cfg.upstreams), "upstream_keys": list(cfg.upstream_keys),
            "tls": tls is not None}
    emit(info, lambda: err_console.print(f"intermediate tracker {module.address} on {url} (pid {info['pid']}), "
                                         f"upstream {', '.join(cfg.upstreams)}"))
    sys.stdout.flush()
    serve(app, host, port, tls=tls)


@tracker.command("devices")
@_TRACKER_URL
@_TRACKER_KEY
@click.option("--status", type=click.Choice(["outdated", "up-to-date", "at-risk", "unknown", "unreachable",
                                             "update-needed"]), default=None, help="Only devices in this state.")
@json_option
def tracker_devices(tracker_url: str, tracker_key: str | None, status: str | None) -> None:
    """The tracker's inventory: devices, readiness, versions, verdicts (C11.2.a-b)."""
    rows = _tracker_call(tracker_url, "GET", "/v1/devices" + (f"?status={status}" if status else ""),
                         tracker_key=tracker_key)

    def human() -> None:
        t = Table(title=f"devices ({len(rows)})")
        for col in ("device", "hardware", "readiness", "components", "state", "update needed"):
            t.add_column(col)
        for d in rows:
            a = d.get("assessment") or {}
            state = ("at risk" if a.get("at_risk") else "outdated" if a.get("outdated") else
                     "up to date" if a else "unassessed")
            comps = ", ".join(f"{p} {c['version']}" for p, c in sorted(d["components"].items()))
            needed = ", ".join(f"{n['product']} {n['to_version']}" for n in d["update_needed"]) or "-"
            t.add_row(d["device_id"], d["hardware"], d["readiness"], comps, state, needed)
        out_console.print(t)

    emit(rows, human)


@tracker.command("outdated")
@_TRACKER_URL
@_TRACKER_KEY
@json_option
def tracker_outdated(tracker_url: str, tracker_key: str | None) -> None:
    """Up-to-date and outdated devices (R10.b.i), and those running revoked or vulnerable releases (R10.b.ii)."""
    out = _tracker_call(tracker_url, "GET", "/v1/outdated", tracker_key=tracker_key)

    def human() -> None:
        out_console.print(f"ledger block {out['ledger_block']}: {out['devices']} devices, "
                          f"{len(out['up_to_date'])} up to date, {len(out['outdated'])} outdated, "
                          f"{len(out['revoked_or_vulnerable'])} on revoked or vulnerable releases")
        for d in out["outdated"]:
            out_console.print(f"[bold]{d['device_id']}[/]")
            for r in d["reasons"]:
                out_console.print(f"  {r}")
        for d in out["revoked_or_vulnerable"]:
            out_console.print(f"[red]{d['device_id']}[/]: " + "; ".join(f["detail"] for f in d["findings"]))

    emit(out, human)


@tracker.command("plan")
@click.argument("device_id")
@_TRACKER_URL
@_TRACKER_KEY
@json_option
def tracker_plan(device_id: str, tracker_url: str, tracker_key: str | None) -> None:
    """A device's update plan (dependencies first) and why newer releases are not in it."""
    from urllib.parse import quote

    out = _tracker_call(tracker_url, "GET", f"/v1/devices/{quote(device_id, safe='')}/plan", tracker_key=tracker_key)

    def human() -> None:
        plan = out["plan"]
        out_console.print(f"device {device_id}: {'outdated' if out['outdated'] else 'up to date'} "
                          f"(ledger block {out['ledger_block']})")
        held = {h["header_hash"]: h for h in out.get("held", [])}
        for u in plan["upgrades"]:
            after = f" after {', '.join(u['after'])}" if u["after"] else ""
            h = held.get(u["header_hash"])
            gate = "" if h is None else f" (held: {h['reason'].replace('_', ' ')}" + (
                f", rollout {h['rollout']} wave {h['wave']}, open {h['open_wave']})" if "rollout" in h else ")")
            out_console.print(f"  install {u['product']} {u['from_version']} -> {u['to_version']}{after}{gate}")
        for b in plan["blocked"]:
            for v in b["verdicts"]:
                why = "; ".join(r["detail"] for r in v["reasons"])
                out_console.print(f"  not {b['product']} {v['version']}: {why}")

    emit(out, human)


@tracker.command("trigger")
@click.argument("header_hash", type=HASH32)
@click.option("--version", "version", required=True, type=VERSION, help="The release's version.")
@click.option("--link", required=True, help="Where the image is (http or https URL).")
@click.option("--source", type=click.Choice(["author", "server", "admin"]), default="admin", show_default=True,
              help="Who asks: T9.a author, T9.b firmware server, T9.c administrator (signed with --key-file).")
@_TRACKER_URL
@_TRACKER_KEY
@json_option
def tracker_trigger(header_hash: bytes, version: Version, link: str, source: str, tracker_url: str,
                    tracker_key: str | None) -> None:
    """Ask the tracker to act on a release (clause 9); refused unless the ledger has it with that version."""
    body = {"source": source, "header_hash": "0x" + header_hash.hex(), "link": link, "version": str(version)}
    out = _tracker_call(tracker_url, "POST", "/v1/triggers", body, tracker_key=tracker_key)
    emit(out, lambda: out_console.print(f"trigger #{out['trigger_id']} ({out['clause']}) accepted: "
                                        f"{len(out['devices'])} device(s) need {version}"))


@tracker.group("rollout")
def tracker_rollout() -> None:
    """Rollouts in waves (docs/MODULES.md 4): list, show, and halt/resume/advance as an administrator (T9.c)."""


def _rollout_human(ro: dict[str, Any]) -> None:
    out_console.print(f"rollout #{ro['id']} {ro['product']} {ro['to_version']} ({ro['header_hash'][:18]}..): "
                      f"{ro['state']}, waves open up to {ro['open_wave']}, {ro['devices']} device(s), "
                      f"{ro['succeeded']} succeeded, {ro['failed']} failed")
    t = Table()
    for col in ("wave", "share", "open", "devices", "needed", "commanded", "succeeded", "failed"):
        t.add_column(col)
    for w in ro["waves"]:
        t.add_row(*(str(w[k]) for k in ("wave", "share", "open", "devices", "needed", "commanded", "succeeded",
                                         "failed")))
    out_console.print(t)


@tracker_rollout.command("list")
@_TRACKER_URL
@_TRACKER_KEY
@json_option
def tracker_rollout_list(tracker_url: str, tracker_key: str | None) -> None:
    """Every rollout, newest first, with per-wave counts."""
    rows = _tracker_call(tracker_url, "GET", "/v1/rollouts", tracker_key=tracker_key)

    def human() -> None:
        if not rows:
            out_console.print("no rollouts")
        for ro in rows:
            _rollout_human(ro)

    emit(rows, human)


@tracker_rollout.command("show")
@click.argument("rollout_id", type=click.IntRange(min=1))
@_TRACKER_URL
@_TRACKER_KEY
@json_option
def tracker_rollout_show(rollout_id: int, tracker_url: str, tracker_key: str | None) -> None:
    """One rollout, its waves and each device's state."""
    ro = _tracker_call(tracker_url, "GET", f"/v1/rollouts/{rollout_id}", tracker_key=tracker_key)

    def human() -> None:
        _rollout_human(ro)
        for m in ro.get("members", []):
            out_console.print(f"  wave {m['wave']} {m['device_id']}: {m['state']}"
                              + (f" ({m['code']})" if m.get("code") else ""))

    emit(ro, human)


def _rollout_action(action: str) -> Callable[..., None]:
    @click.argument("rollout_id", type=click.IntRange(min=1))
    @_TRACKER_URL
    @_TRACKER_KEY
    @json_option
    def command(rollout_id: int, tracker_url: str, tracker_key: str | None) -> None:
        ro = _tracker_call(tracker_url, "POST", f"/v1/rollouts/{rollout_id}/{action}", tracker_key=tracker_key)
        emit(ro, lambda: _rollout_human(ro))

    command.__doc__ = {"halt": "Halt a rollout: no more commands until it is resumed (administrator key).",
                       "resume": "Resume a halted rollout, acknowledging its failures so far (administrator key).",
                       "advance": "Open the next wave of a rollout by hand (administrator key).",
                       "retry": "Try a rollout's failed devices again, acknowledging their failures and running "
                                "it again (administrator key)."}[action]
    return command


for _action in ("halt", "resume", "advance", "retry"):
    tracker_rollout.command(_action)(_rollout_action(_action))


# ----------------------------------------------------------------------------- device (firmware consumer)

#: largest evidence file a device reads (a header, a few attestations, one eth_getProof answer)
_MAX_EVIDENCE = 4 << 20


def _device_errors(f: Callable[..., Any]) -> Callable[..., Any]:
    """Device commands: an error with a stable ``code`` becomes ``error: <code>: <message>`` (exit 1)."""
    import functools

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except FwledgerError as exc:
            code = getattr(exc, "code", None)
            if not code:
                raise
            _device_fail(str(code), str(exc), exc.exit_code)
    return wrapper


def _device_fail(code: str, message: str, exit_code: int = 1, extra: dict[str, Any] | None = None) -> None:
    message = " ".join(message.split())
    c = _ctx()
    if c is not None and c.json_out:
        click.echo(json.dumps({"ok": False, "code": code, "error": message, **(extra or {})}, indent=2, default=str))
    click.echo(f"error: {code}: {message}", err=True)
    sys.exit(exit_code)


def _read_evidence(path: Path | None, bundle: Path) -> Any:
    from entities.firmware_consumer.store import read_bounded

    if path is None:
        guess = bundle.with_name(bundle.name + ".evidence.json")
        if not guess.exists():
            raise click.UsageError(f"no evidence for {bundle}: give --evidence FILE (or put it at {guess}); "
                                   "or update through trackers with --tracker URL")
        path = guess
    try:
        data = read_bounded(path, _MAX_EVIDENCE)
    except FwledgerError as exc:
        raise ConfigError(f"cannot read evidence {path}: {exc}") from exc
    if data is None:
        raise ConfigError(f"evidence file {path} does not exist")
    try:
        return json.loads(data)
    except ValueError as exc:
        from entities.firmware_consumer import UpdateRefused

        raise UpdateRefused("bad_evidence", f"{path} is not JSON: {exc}") from exc


@cli.group()
def device() -> None:
    """A device: firmware consumers that verify everything before installing (X.1368 P3-P5, C11.1)."""


def _device_tls_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--tls-ca``, ``--tls-cert``, ``--tls-key``: the device's HTTPS trust (docs/THREATS.md, Network)."""
    path = click.Path(exists=True, dir_okay=False, path_type=Path)
    fn = click.option("--tls-key", type=path, default=None, help="Its private key (PEM).")(fn)
    fn = click.option("--tls-cert", type=path, default=None,
                      help="The device's TLS client certificate (PEM; fwledger fleet issue --role device), for "
                           "modules that require one.")(fn)
    return click.option("--tls-ca", type=path, default=None,
                        help="The CA every HTTPS tracker module and firmware server must chain to (PEM; the fleet "
                             "CA's ca.crt): pinned, nothing else is trusted.")(fn)


def _read_device_tls(ca: Path | None, cert: Path | None, key: Path | None) -> dict[str, bytes] | None:
    if (cert is None) != (key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    files = {"ca": ca, "cert": cert, "key": key}
    try:
        out = {k: p.read_bytes() for k, p in files.items() if p is not None}
    except OSError as exc:
        raise ConfigError(f"cannot read a TLS file: {exc.strerror or exc}") from exc
    return out or None


@device.command("tls")
@click.option("--dir", "root", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The device folder.")
@_device_tls_options
@json_option
@_device_errors
def device_tls(root: Path, tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None) -> None:
    """Pin a new HTTPS CA and/or install a TLS client certificate on a provisioned device (a trust
    anchor rotation: give the new CA before the services switch to certificates it signed)."""
    from .firmware_consumer.provision import load_provisioning, set_device_tls

    tls = _read_device_tls(tls_ca, tls_cert, tls_key)
    if tls is None:
        raise click.UsageError("give --tls-ca and/or --tls-cert with --tls-key")
    load_provisioning(root)  # a provisioned device, or a one-line error
    set_device_tls(root, **tls)
    prov = load_provisioning(root)
    out = {"dir": str(root), "tls_ca": str(prov.tls_ca) if prov.tls_ca else None,
           "tls_cert": str(prov.tls_cert) if prov.tls_cert else None}
    emit(out, lambda: out_console.print(f"{root}: TLS CA {out['tls_ca'] or '(none)'}, client certificate "
                                        f"{out['tls_cert'] or '(none)'}"))


@device.command("init")
@click.option("--dir", "root", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The device folder to create.")
@click.option("--id", "device_id", required=True, help="Device id.")
@click.option("--hardware", required=True, help="The device's hardware class id (as registered on the ledger).")
@click.option("--component", "components", multiple=True, required=True,
              help="NAME, NAME=PRODUCT or NAME=VENDOR/PRODUCT: a component and the product line it runs (repeat).")
@click.option("--anchors", "anchors_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Trust anchors JSON (fwledger device anchors).")
@click.option("--class-key", "class_key_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="The hardware class's X25519 private key (hex) [a new class key pair].")
@click.option("--health-cmd", default=None, help="Health check command run on every trial boot (exit 0 = healthy).")
@click.option("--max-boot-attempts", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--relay", "relays", multiple=True, type=ADDRESS,
              help="An intermediate tracker module's address: its answers are accepted, never as "
                   "attestations (repeat).")
@click.option("--intra-device", is_flag=True,
              help="The device runs its own tracker (D8.2.1): a tracker key in DIR/keys/tracker.key becomes the "
                   "anchors' only tracker (k = 1); see device run --intra-device.")
@_device_tls_options
@json_option
@_device_errors
def device_init(root: Path, device_id: str, hardware: str, components: tuple[str, ...], anchors_file: Path,
                class_key_file: Path | None, health_cmd: str | None, max_boot_attempts: int,
                relays: tuple[str, ...], intra_device: bool, tls_ca: Path | None, tls_cert: Path | None,
                tls_key: Path | None) -> None:
    """Provision a device folder: identity key, class key, trust anchors, components with A/B slots."""
    import shlex

    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from ledger_node.fsutil import read_json

    from .firmware_consumer.provision import parse_component_spec, provision_device
    from .firmware_consumer.verify import TrustAnchors

    anchors = TrustAnchors.from_json(read_json(anchors_file))
    if class_key_file is not None:
        try:
            class_key = bytes.fromhex(class_key_file.read_text().strip().removeprefix("0x"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the class key {class_key_file}: {exc}") from exc
    else:
        class_key = X25519PrivateKey.generate().private_bytes_raw()
    bindings = dict(parse_component_spec(c) for c in components)
    tls = _read_device_tls(tls_ca, tls_cert, tls_key)  # checked before anything is written
    prov = provision_device(root, device_id=device_id, hardware=hardware, components=bindings, anchors=anchors,
                            class_private_key=class_key, max_boot_attempts=max_boot_attempts,
                            health_command=shlex.split(health_cmd) if health_cmd else None, relays=relays,
                            intra_device=intra_device, tls=tls)
    anchors = prov.anchors
    out = {"dir": str(root), "id": device_id, "hardware": hardware,
           "components": {n: b.to_json() for n, b in prov.bindings.items()},
           "identity_address": prov.identity.address, "class_public_key": prov.class_public_key.hex(),
           "class_key_generated": class_key_file is None,
           "anchors": {"chain_id": anchors.chain_id, "registry": anchors.registry, "quorum": anchors.quorum,
                       "trackers": list(anchors.trackers), "relays": list(anchors.relays),
                       "max_header_age": anchors.max_header_age},
           "intra_device": intra_device, "tls_ca": str(prov.tls_ca) if prov.tls_ca else None,
           "tls_cert": str(prov.tls_cert) if prov.tls_cert else None}
    emit(out, lambda: out_console.print(
        f"device [bold]{device_id}[/] ({hardware}) in {root}: components {', '.join(prov.bindings)}; "
        f"identity {prov.identity.address}"
        + (f"\nnew class key pair; public key {out['class_public_key']} "
           f"(fwledger admin add-hardware --id {hardware} --enc-key ...)" if class_key_file is None else "")))


@device.command("status")
@click.option("--dir", "root", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--evidence", "evidence_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Evidence of a release: also tell whether the device needs it (C11.1.a.iv).")
@json_option
@_device_errors
def device_status(root: Path, evidence_file: Path | None) -> None:
    """Components, versions, active slots, last results, and whether an update is needed."""
    from .firmware_consumer import Device, NotADevice, read_status
    from .firmware_consumer.provision import load_provisioning
    from .firmware_consumer.updater import Updater

    out = read_status(root)
    try:
        prov = load_provisioning(root)
    except NotADevice:  # a bare device folder (no trust anchors): its state only
        prov = None
    out["identity_address"] = prov.identity.address if prov is not None else None
    for comp in out["components"]:
        b = prov.bindings.get(comp["name"]) if prov is not None else None
        comp["product"], comp["vendor"] = (b.product, b.vendor) if b else (comp["name"], None)
        comp["needs_update"] = bool(comp.get("safe_mode") or (comp.get("confirmed") is None
                                                              and comp.get("trial") is None))
    out["needs_update"] = any(c["needs_update"] for c in out["components"])
    if evidence_file is not None:
        if prov is None:
            raise NotADevice(f"{root} has no trust anchors: it cannot judge evidence (provision it with device init)")
        with Device(root) as dev:
            out["release"] = Updater.from_provisioning(dev, prov).needs_update(
                _read_evidence(evidence_file, evidence_file))["release"]
        out["needs_update"] = out["needs_update"] or bool(out["release"]["needed"])

    def human() -> None:
        t = Table(title=f"device {out['device']['id']} ({out['device']['hardware']}, {out['device']['mode']})")
        for col in ("component", "line", "version", "mode", "active", "counter", "last result"):
            t.add_column(col)
        for comp in out["components"]:
            if "error" in comp:
                t.add_row(comp["name"], "", "", "", "", "", comp["error"]["code"])
                continue
            last = comp["last_result"] or {}
            t.add_row(comp["name"], f"{comp['vendor'] or '*'}/{comp['product']}", comp["version"] or "-",
                      comp["mode"], comp["active"] or "-", comp["counter"],
                      "" if not last else f"{last['op']}: {'ok' if last['ok'] else last['code']}")
        out_console.print(t)
    emit(out, human)


def _device_update(root: Path, bundle: Path, evidence_file: Path | None, component: str | None, *,
                   recover: bool) -> None:
    from .firmware_consumer import Device
    from .firmware_consumer.provision import load_provisioning
    from .firmware_consumer.updater import Updater

    evidence = _read_evidence(evidence_file, bundle)
    prov = load_provisioning(root)
    with Device(root) as dev:
        report = Updater.from_provisioning(dev, prov).update(bundle, evidence, component=component, recover=recover)
    out = report.to_json()
    if not report.ok:
        _device_fail(report.code or report.outcome, f"{out['component']} {out['version']} {report.outcome} "
                     f"after its trial boot ({report.code}); running {report.boot.version or 'safe mode'}",
                     extra={"report": out})
    emit(out, lambda: out_console.print(
        f"{out['component']}: {out['vendor']}/{out['product']} [bold]{out['version']}[/] installed in slot "
        f"{out['slot']}" + (f" (resumed at byte {out['resumed_from']})" if out["resumed_from"] else "")
        + f"; {report.outcome}"))


@device.command("update")
@click.option("--dir", "root", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--bundle", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The bundle (from any source: it is verified).")
@click.option("--evidence", "evidence_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Evidence JSON for the release [BUNDLE.evidence.json].")
@click.option("--component", default=None, help="Component to update [the one running the bundle's product].")
@click.option("--tracker", "trackers", multiple=True,
              help="Status tracker URL (repeat): report status, take its plan, evidence and k-of-n attestations "
                   "(tracker keys and k from the device's anchors) instead of --bundle.")
@click.option("--server", "servers", multiple=True,
              help="Firmware server URL tried before the one the record's file_link names (repeat; with --tracker).")
@click.option("--location", default=None, help="Location label declared to firmware servers (with --tracker).")
@json_option
@_device_errors
def device_update(root: Path, bundle: Path | None, evidence_file: Path | None, component: str | None,
                  trackers: tuple[str, ...], servers: tuple[str, ...], location: str | None) -> None:
    """Verify a bundle against the ledger, install it in the inactive slot, trial-boot it (P3-P5).

    With --tracker: one pass of X.1368 clause 7 over the network (P2-P5): heartbeat, the tracker's
    plan, then per upgrade evidence, header and payload (Range resume), verify, install, report.
    """
    if trackers:
        if bundle is not None or evidence_file is not None or component is not None:
            raise click.UsageError("--tracker takes the plan, the evidence and the bundle from the network: "
                                   "drop --bundle, --evidence and --component")
        _device_network_update(root, trackers, servers, location)
        return
    if servers or location is not None:
        raise click.UsageError("--server and --location go with --tracker")
    if bundle is None:
        raise click.UsageError("give --bundle PATH (and --evidence FILE), or --tracker URL")
    _device_update(root, bundle, evidence_file, component, recover=False)


def _device_agent(root: Path, trackers: tuple[str, ...], servers: tuple[str, ...], location: str | None,
                  follow: str = "plan") -> Any:
    from .firmware_consumer.agent import Agent, AgentConfig

    return Agent(root, AgentConfig(trackers=trackers, servers=servers, location=location, follow=follow))


def _pass_lines(report: Any) -> list[str]:
    """One line per refused command and per upgrade of an agent pass (or why there was none)."""
    lines = [f"command {c['command_id'] or '?'} from {c['tracker']}: refused: {c['code']}: {c['message']}"
             for c in report.refusals]
    for r in report.results:
        dl = r.download or {}
        via = (f" ({dl['bytes']} bytes from {dl['server']}"
               + (f", resumed at {', '.join(map(str, dl['resumed_at']))}" if dl.get("resumed_at") else "") + ")"
               if dl.get("bytes") else "")
        lines.append(f"{r.component or r.product}: {r.vendor}/{r.product} {r.version} "
                     + (f"{r.outcome}{via}" if r.ok else f"failed: {r.code}: {r.message}"))
    if not report.results and not report.refusals:
        state = "outdated" if report.outdated else "up to date"
        lines.append(f"device {report.device_id}: nothing to install; {state}"
                     + (": " + "; ".join(report.reasons) if report.outdated and report.reasons else ""))
    return lines


def _device_network_update(root: Path, trackers: tuple[str, ...], servers: tuple[str, ...],
                           location: str | None) -> None:
    with _device_agent(root, trackers, servers, location) as agent:
        report = agent.check_and_update()
    out = report.to_json()
    if report.failures:
        first = report.failures[0]
        _device_fail(first.code or "update_failed", f"{first.component or first.product} {first.version}: "
                     f"{first.message}", extra={"report": out})
    if report.refusals:
        cmd = report.refusals[0]
        _device_fail(str(cmd["code"]), f"command {cmd['command_id'] or '?'} from {cmd['tracker']} refused: "
                     f"{cmd['message']}", extra={"report": out})
    emit(out, lambda: out_console.print("\n".join(_pass_lines(report)), markup=False))


@device.command("recover")
@click.option("--dir", "root", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--bundle", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--evidence", "evidence_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Evidence JSON for the release [BUNDLE.evidence.json].")
@click.option("--component", default=None, help="Component in safe mode [the one running the bundle's product].")
@json_option
@_device_errors
def device_recover(root: Path, bundle: Path, evidence_file: Path | None, component: str | None) -> None:
    """Safe mode's manual install (C11.1.b): verified exactly like an update, then a trial boot."""
    _device_update(root, bundle, evidence_file, component, recover=True)


@device.command("run")
@click.option("--dir", "root", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--tracker", "trackers", multiple=True,
              help="Status tracker URL (repeat; tracker keys and k from the device's anchors; or --intra-device).")
@click.option("--server", "servers", multiple=True,
              help="Firmware server URL tried before the one the record's file_link names (repeat).")
@click.option("--location", default=None, help="Location label declared to firmware servers.")
@click.option("--interval", type=click.FloatRange(min=0.01), default=60.0, show_default=True,
              help="Seconds between passes.")
@click.option("--passes", type=click.IntRange(min=1), default=None, help="Stop after N passes [until SIGINT/SIGTERM].")
@click.option("--follow", type=click.Choice(["plan", "commands"]), default="plan", show_default=True,
              help="Act on the signed commands heartbeat answers carry, and else on the tracker's plan ('plan'), "
                   "or on commands only ('commands').")
@click.option("--intra-device", is_flag=True,
              help="Run the device's own tracker in this process (D8.2.1; provisioned with device init "
                   "--intra-device): its full node uses --rpc and the home's deployment record.")
@click.option("--rpc", default=None, help="With --intra-device: the chain's JSON-RPC URL [the global --rpc].")
@click.option("--ledger-poll", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
              help="With --intra-device: seconds between the in-device tracker's ledger polls.")
@json_option
@_device_errors
def device_run(root: Path, trackers: tuple[str, ...], servers: tuple[str, ...], location: str | None,
               interval: float, passes: int | None, follow: str, intra_device: bool, rpc: str | None,
               ledger_poll: float) -> None:
    """The device agent: one pass of clause 7 (as `device update --tracker`) every INTERVAL seconds.

    An unreachable tracker or server ends that pass only; the device keeps running and reports
    later. One line per pass on stderr (a JSON line with --json); a summary at the end. With
    --intra-device the agent's only tracker is one it runs itself, on a loopback port.
    """
    import signal
    import threading

    from .firmware_consumer.agent import PassReport

    c = _ctx()
    if intra_device == bool(trackers):
        raise click.UsageError("give --tracker URL (repeat) or --intra-device, not both")
    if rpc is not None and not intra_device:
        raise click.UsageError("--rpc goes with --intra-device (or use the global --rpc)")
    if rpc is not None:
        c.flags["rpc"] = rpc
    stop = threading.Event()
    summary: dict[str, Any] = {"passes": 0, "installed": [], "failed": [], "refused": [], "unreachable": 0,
                               "outdated": None}

    def on_pass(outcome: Any) -> None:
        summary["passes"] += 1
        n = summary["passes"]
        if isinstance(outcome, PassReport):
            summary["outdated"] = outcome.outdated
            for r in outcome.results:
                summary["installed" if r.ok else "failed"].append(
                    {"pass": n, "component": r.component, "version": r.version, "outcome": r.outcome, "code": r.code})
            summary["refused"].extend({"pass": n, "command_id": r["command_id"], "code": r["code"]}
                                      for r in outcome.refusals)
            line: Any = {"pass": n, **outcome.to_json()} if c.json_out else \
                f"pass {n}: " + " | ".join(_pass_lines(outcome))
        else:
            summary["unreachable"] += 1
            code = getattr(outcome, "code", "error")
            line = {"pass": n, "ok": False, "code": code, "error": str(outcome)} if c.json_out else \
                f"pass {n}: error: {code}: {' '.join(str(outcome).split())}"
        click.echo(json.dumps(line, default=str) if c.json_out else line, err=True)

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        if intra_device:
            from .intra_device import run_intra_device

            def started(url: str) -> None:
                click.echo(json.dumps({"intra_tracker": url}) if c.json_out else f"in-device tracker on {url}",
                           err=True)

            run_intra_device(root, c.trusted_w3(), c.deployment(), interval, stop, passes=passes, on_pass=on_pass,
                             servers=servers, location=location, follow=follow, poll_interval=ledger_poll,
                             confirmations=c.settings.confirmations, on_start=started)
        else:
            with _device_agent(root, trackers, servers, location, follow) as agent:
                agent.run(interval, stop, passes=passes, on_pass=on_pass)
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
    emit(summary, lambda: out_console.print(
        f"{summary['passes']} pass(es): {len(summary['installed'])} installed, {len(summary['failed'])} failed, "
        f"{len(summary['refused'])} command(s) refused, {summary['unreachable']} without a tracker", markup=False))


@device.command("anchors")
@click.option("--tracker", "trackers", multiple=True, required=True, type=ADDRESS,
              help="A tracker's attestation address (repeat).")
@click.option("--quorum", type=click.IntRange(min=1), required=True, help="k: attestations a header needs.")
@click.option("--max-age", type=click.FloatRange(min=1), default=3600.0, show_default=True,
              help="Oldest block header accepted, seconds (freeze attacks).")
@click.option("--relay", "relays", multiple=True, type=ADDRESS,
              help="An intermediate tracker module's address: its answers are accepted, never as "
                   "attestations (repeat).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@json_option
@_device_errors
def device_anchors(trackers: tuple[str, ...], quorum: int, max_age: float, relays: tuple[str, ...],
                   output: Path) -> None:
    """Write the trust anchors devices are provisioned with, from this home's registry deployment."""
    from ledger_node.compiler import registry_contract
    from ledger_node.fsutil import atomic_write_json

    from .firmware_consumer.provision import anchors_from_deployment

    anchors = anchors_from_deployment(_ctx().deployment(), registry_contract(), trackers=trackers, quorum=quorum,
                                      max_header_age=max_age, relays=relays)
    atomic_write_json(output, anchors.to_json())
    out = {"anchors": str(output), **anchors.to_json()}
    emit(out, lambda: out_console.print(f"trust anchors for registry {anchors.registry} "
                                        f"({quorum} of {len(trackers)} trackers) in {output}"))


@device.command("evidence")
@click.option("--bundle", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--anchors", "anchors_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--hardware", required=True, help="The device's hardware class (its policy is proven).")
@click.option("--tracker-key", "tracker_keys", multiple=True, required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A tracker's key file, to attest the header (repeat; for the manual path without running trackers).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write it [BUNDLE.evidence.json].")
@json_option
@_device_errors
def device_evidence(bundle: Path, anchors_file: Path, hardware: str, tracker_keys: tuple[Path, ...],
                    output: Path | None) -> None:
    """Gather the evidence a device verifies for BUNDLE: attested header, proofs, the published record."""
    from ledger_node.fsutil import atomic_write_json, read_json
    from ledger_node.header import decode_header

    from .bundle import BundleError, read_header
    from .firmware_consumer.provision import find_published, gather_evidence
    from .firmware_consumer.verify import TrustAnchors

    anchors = TrustAnchors.from_json(read_json(anchors_file))
    try:
        with open(bundle, "rb") as fh:
            header, _ = read_header(fh)
    except BundleError as exc:
        _device_fail(exc.code, str(exc))
    w3 = _ctx().w3()
    record = find_published(w3, anchors, header)
    if record is None:
        raise ConfigError(f"{bundle} is not published on registry {anchors.registry}")
    ev = gather_evidence(w3, anchors, record, hardware, [load_key(k) for k in tracker_keys])
    output = output or bundle.with_name(bundle.name + ".evidence.json")
    atomic_write_json(output, ev.to_json())
    out = {"evidence": str(output), "header_hash": "0x" + record.header_hash.hex(),
           "block": decode_header(ev.header_rlp).number, "attestations": len(ev.attestations),
           "successors": len(ev.successors)}
    emit(out, lambda: out_console.print(f"evidence for {record.data.product} {record.data.version} in {output}"))


# the operator's device admission commands (fleet admit, import, pending, accept, ...) live in their own module
from . import admission_cli  # noqa: E402, F401


def main() -> None:
    cli(prog_name="fwledger")


if __name__ == "__main__":  # python -m entities.cli: run the package's module, where admission_cli registered
    from entities.cli import main as _main

    _main()
