"""``fwledger chain|admin|node|release|devnet ...``: the ledger's commands (deploy, k-of-n
administration, the full node's index, release records, the local anvil node)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from ledger_node.errors import ConfigError
from ledger_node.record import ZERO_HASH, ReleaseData, ReleaseRecord, Version, dependencies_from_texts

from .cli import ADDRESS, HASH32, HASH_REF, VERSION, _ctx, cli, emit, err_console, json_option, out_console

__all__: list[str] = []  # click commands registered on their groups


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
    account = c.signer()
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


@chain.command("fund")
@click.argument("address")
@click.option("--eth", "amount", required=True, metavar="AMOUNT", help="Ether to send (a decimal: 1, 0.25).")
@json_option
def chain_fund(address: str, amount: str) -> None:
    """Send AMOUNT ether to ADDRESS (a new administrator's or vendor's key) and wait for the receipt.
    From the --key-file account; without one, on a devnet or the embedded chain, from the first
    development account, else from <home>/keys/admin.key."""
    from eth_utils import is_address, to_checksum_address

    from ledger_node.errors import ChainError
    from ledger_node.providers import dev_accounts
    from ledger_node.transfer import format_ether, parse_ether, send_ether

    if not is_address(address):
        raise ConfigError(f"{address!r} is not an Ethereum address (0x and 40 hex digits, checksummed if mixed case)")
    to = to_checksum_address(address)
    wei = parse_ether(amount)
    c = _ctx()
    w3 = c.w3()
    sender = None
    if c.settings.key_file is None:
        try:
            sender = dev_accounts(w3, 1)[0]
        except ChainError:
            sender = None  # not a development chain: the home's key
    res = send_ether(w3, sender or c.signer(), to, wei, timeout=c.settings.timeout)
    out = res.to_json()
    emit(out, lambda: out_console.print(
        f"sent {format_ether(wei)} ETH from {res.sender} to {to} (tx {res.tx}, block {res.block}); "
        f"{to} now holds {format_ether(res.balance)} ETH", markup=False, soft_wrap=True))


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
        shown = unique_prefixes(fn.index, [r["header_hash"] for r in rows])
        t = Table(title=f"releases ({len(rows)}); HASH: any command taking one accepts this prefix")
        for col in ("vendor", "product", "version"):
            t.add_column(col)
        t.add_column("header hash", no_wrap=True, min_width=max((len(h) for h in shown), default=0))
        for col in ("block", "status"):
            t.add_column(col)
        for r, short in zip(rows, shown, strict=True):
            status = ", ".join(flag for flag in ("revoked", "vulnerable", "flagged", "head") if r.get(flag)) or "-"
            t.add_row(r["vendor_name"], r["product"], r["version"], short, str(r.get("block", "")), status)
        out_console.print(t)

    emit(rows, human)


SHOWN_DIGITS = 16  # hex digits of a header hash shown in tables: a prefix every HASH argument accepts


def unique_prefixes(index: Any, hashes: list[str], digits: int = SHOWN_DIGITS) -> list[str]:
    """``0x`` + the first ``digits`` hex digits of each header hash, longer where another release in
    the index shares them (so that each shown prefix names one release)."""
    out = []
    for h in hashes:
        n = digits
        while n < 64 and len(index.header_hashes_with_prefix(h[:2 + n], limit=2)) > 1:
            n += 4
        out.append(h[:2 + min(n, 64)])
    return out


_CANDIDATES_SHOWN = 5


def release_by_ref(index: Any, ref: str) -> Any:
    """The indexed release a HASH argument names: all 64 hex digits, or a prefix that only one
    release's header hash starts with (``ref`` as :class:`entities.cli.HashRefParam` returns it).

    Raises:
        ConfigError: no such release, or the prefix is ambiguous (naming the candidates).
    """
    if len(ref) == 64:
        rel = index.release(bytes.fromhex(ref))
        if rel is None:
            raise ConfigError(f"no release 0x{ref} in the registry's index")
        return rel
    hits = index.header_hashes_with_prefix(ref, limit=_CANDIDATES_SHOWN + 1)
    if not hits:
        raise ConfigError(f"no release whose header hash starts with 0x{ref} in the registry's index")
    if len(hits) > 1:
        named = []
        for h in hits[:_CANDIDATES_SHOWN]:
            rel = index.release(h)
            named.append(f"0x{h.hex()} ({rel.vendor_name}/{rel.product} {rel.version})" if rel else f"0x{h.hex()}")
        more = ", ..." if len(hits) > _CANDIDATES_SHOWN else ""
        raise ConfigError(f"header hash prefix 0x{ref} is ambiguous: {', '.join(named)}{more}; give more digits")
    return index.release(hits[0])


def header_hash_for(ref: str) -> str:
    """The 64 hex digits a HASH argument stands for, for commands that send it elsewhere (tracker
    trigger, rollout create): all 64 given are taken as they are; a prefix is looked up in this
    home's full node.

    Raises:
        FwledgerError: a prefix with no usable full node (no deployment, no chain), unknown or ambiguous.
    """
    from ledger_node.errors import FwledgerError

    if len(ref) == 64:
        return ref
    try:
        index = _synced_node().index
    except FwledgerError as exc:
        raise FwledgerError(f"header hash prefix 0x{ref} needs this home's full node ({exc}); "
                            "give all 64 hex digits") from None
    return str(release_by_ref(index, ref).header_hash.hex())


def _find_release(ref: str) -> Any:
    return release_by_ref(_synced_node().index, ref)


@release.command("show")
@click.argument("header_hash", type=HASH_REF)
@json_option
def release_show(header_hash: str) -> None:
    """Show one release record (Table II.1) and its status. HASH: the header hash or a unique
    prefix of at least 8 hex digits."""
    row = _release_row(_find_release(header_hash))
    emit(row, lambda: _kv_table("release", row))


@release.command("revoke")
@click.argument("header_hash", type=HASH_REF)
@click.option("--reason", required=True, help="Why, in words.")
@json_option
def release_revoke(header_hash: str, reason: str) -> None:
    """Revoke a release (its vendor at once, or the administration k of n). HASH: the header hash or
    a unique prefix of at least 8 hex digits."""
    rel = _find_release(header_hash)
    d = rel.record.data
    res = _ctx().registry(signer=True).revoke(d.vendor_name, d.product, rel.header_hash, reason)
    _admin_cmd(res, f"revoke {d.vendor_name}/{d.product} {d.version}")


@release.command("mark-vulnerable")
@click.argument("header_hash", type=HASH_REF)
@click.option("--note", default="", help="Advisory (CVE id...).")
@json_option
def release_mark_vulnerable(header_hash: str, note: str) -> None:
    """Flag a release as vulnerable (R10.b.ii). HASH: the header hash or a unique prefix of at least
    8 hex digits."""
    rel = _find_release(header_hash)
    d = rel.record.data
    res = _ctx().registry(signer=True).mark_vulnerable(d.vendor_name, d.product, rel.header_hash, note)
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
