"""``fwledger author ...``: the author's commands (keys, signed and encrypted bundles, upload then publish)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from ledger_node.errors import ConfigError
from ledger_node.record import Version, dependencies_from_texts

from .cli import VERSION, _client_tls, _ctx, cli, emit, json_option, load_key, out_console
from .ledger_cli import _synced_node

__all__: list[str] = []  # click commands registered on their groups


# ----------------------------------------------------------------------------- author

@cli.group()
def author() -> None:
    """The author: signing keys (keygen), signed and encrypted bundles, upload and publish (X.1368 P1, C11.4)."""


_PASSPHRASE_FILE = click.option(
    "--passphrase-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
    help="File whose first line is the keystore passphrase [else the root option fwledger --passphrase-file "
         "or env FWLEDGER_PASSPHRASE_FILE, else env FWLEDGER_PASSPHRASE, else a prompt].")


def _author_passphrase(passphrase_file: Path | None, *, confirm: bool) -> str:
    from .settings import PASSPHRASE_ENV, read_passphrase_file

    named = passphrase_file or _ctx().settings.passphrase_file
    if named is not None:
        return read_passphrase_file(named)
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV]
    return str(click.prompt("Keystore passphrase", hide_input=True, confirmation_prompt=confirm, err=True))


_TRUST_OPTIONS = (
    click.option("--anchors", "anchors", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                 envvar="FWLEDGER_AUTHOR_ANCHORS",
                 help="Trust anchors (fwledger device anchors): prove the ledger at a header k of their n "
                      "trackers attest [env FWLEDGER_AUTHOR_ANCHORS]."),
    click.option("--tracker", "trackers", multiple=True, envvar="FWLEDGER_AUTHOR_TRACKERS",
                 help="Tracker module URL to ask for attestations, with --anchors (repeat) "
                      "[env FWLEDGER_AUTHOR_TRACKERS, space-separated]."),
    click.option("--verify-rpc", "verify_rpc", default=None, envvar="FWLEDGER_VERIFY_RPC",
                 help="A second, independent JSON-RPC node whose block hash must agree with the header "
                      "[env FWLEDGER_VERIFY_RPC]."),
)


def _trust_options(f: Any) -> Any:
    for option in reversed(_TRUST_OPTIONS):
        f = option(f)
    return f


def _header_source(anchors: Path | None, trackers: tuple[str, ...], verify_rpc: str | None, session: Any) -> Any:
    """Where the author takes the header it proves the ledger at (docs/THREATS.md, "A lying node"):
    k of n tracker attestations (--anchors), a second node agreeing (--verify-rpc), both, or by
    default the author's own node (embedded or loopback); any other node alone is refused."""
    from .header_sources import header_source

    c = _ctx()
    return header_source(c.settings.rpc, anchors=anchors, trackers=trackers, verify_rpc=verify_rpc, session=session,
                         timeout=c.settings.timeout, who="author")


def _proven_json(trusted: Any) -> dict[str, Any]:
    return {"block": trusted.number, "block_hash": "0x" + trusted.block_hash.hex(), "header_source": trusted.source}


def _author_account(passphrase_file: Path | None) -> Any:
    from .settings import is_keystore

    path = _ctx().settings.signing_key_file()
    if is_keystore(path):
        return load_key(path, passphrase=_author_passphrase(passphrase_file, confirm=False))
    return load_key(path)


def _keygen_next(role: str, name: str, address: str, keystore: Path) -> list[str]:
    """What the holder of a new key does next, by role (one line each)."""
    fund = f"fund it (it sends transactions): fwledger chain fund {address} --eth 1"
    if role == "vendor":
        return [fund, f"an administrator registers it: fwledger admin add-vendor --name {name} --address {address}",
                f"then sign with: fwledger --key-file {keystore} --passphrase-file FILE author build|publish ..."]
    if role == "admin":
        return [fund, f"name it at deployment (fwledger chain deploy --admin {address} ...) or have the "
                      f"administrators add it (fwledger admin add-admin --address {address})",
                f"then sign with: fwledger --key-file {keystore} --passphrase-file FILE admin ..."]
    return ["no funds needed (an operator signs requests to services, not transactions)",
            f"services honour it with --operator-key {address} (fleet admission) and trackers with "
            f"--admin-key {address} (triggers, fleet queries, rollouts)",
            f"then sign with: fwledger --key-file {keystore} --passphrase-file FILE fleet|tracker ..."]


@author.command("keygen")
@click.option("--name", required=True, help="Key name: the keystore is <home>/keys/<name>.json.")
@click.option("--role", type=click.Choice(["vendor", "admin", "operator"]), default="vendor", show_default=True,
              help="Who will sign with it: a vendor (releases), an administrator (the registry, k of n) or a fleet "
                   "operator (admission, triggers); it changes only the advice printed.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the keystore here instead.")
@_PASSPHRASE_FILE
@json_option
def author_keygen(name: str, role: str, out: Path | None, passphrase_file: Path | None) -> None:
    """Create a new signing key (a vendor's, an administrator's or an operator's) in an encrypted
    keystore (never overwrites one); prints its address, to fund and to register."""
    from .author.keys import create_keystore, keystore_path

    path = keystore_path(_ctx().settings.home, name) if out is None else out
    if path.exists():
        raise ConfigError(f"{path} already exists: refusing to overwrite a key")
    key = create_keystore(path, _author_passphrase(passphrase_file, confirm=True))
    steps = _keygen_next(role, name, key.address, key.keystore)
    out_obj = key.to_json() | {"role": role, "needs_funds": role != "operator", "next": steps}
    emit(out_obj, lambda: out_console.print(
        f"signing key ({role}) {key.address} in {key.keystore}\n" + "\n".join(f"  {line}" for line in steps),
        markup=False, soft_wrap=True))


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
@_trust_options
@json_option
def author_build(image: Path, vendor_name: str | None, product: str, version: Version, hardware: tuple[str, ...],
                 depends: tuple[str, ...], link: str, file_name: str | None, output: Path,
                 passphrase_file: Path | None, anchors: Path | None, trackers: tuple[str, ...],
                 verify_rpc: str | None) -> None:
    """Encrypt IMAGE for the hardware classes' ledger keys and sign its record into a bundle (R10.f.i).
    The keys, the vendor's standing and the line's head are first proven with storage proofs at a
    trusted header (--anchors/--tracker, --verify-rpc, else the author's own node); nothing is
    written unless they are."""
    import requests

    from .author.trust import prove_build_inputs
    from .bundle import build_bundle, release_digest

    account = _author_account(passphrase_file)
    with requests.Session() as session:
        _client_tls(session)
        source = _header_source(anchors, trackers, verify_rpc, session)
        fn = _synced_node()
        reg = _ctx().registry()
        inputs, _, trusted = prove_build_inputs(reg, fn.index, account.address, source, vendor_name=vendor_name,
                                                product=product, version=version, hardware=hardware)
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
           "chain_id": inputs.chain_id, "registry": inputs.registry, "proven": _proven_json(trusted)}
    emit(out, lambda: out_console.print(
        f"bundle [bold]{output}[/]: {d.vendor_name}/{d.product} {d.version} for {', '.join(d.supported_hardware)} "
        f"({d.file_size} bytes encrypted), digest {out['digest']}\n"
        f"ledger proven at block {trusted.number} ({trusted.source})\n"
        f"next: fwledger author publish {output} --server URL"))


@author.command("publish")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--server", "servers", multiple=True, required=True, help="Firmware server base URL (repeat).")
@_PASSPHRASE_FILE
@_trust_options
@json_option
def author_publish(bundle: Path, servers: tuple[str, ...], passphrase_file: Path | None, anchors: Path | None,
                   trackers: tuple[str, ...], verify_rpc: str | None) -> None:
    """Upload BUNDLE to every server, then publish its record on the ledger (P1); no upload, no record.
    Before any upload, the vendor's standing, the classes and the head are proven at a trusted header
    (as for build). HTTPS servers are checked against FWLEDGER_TLS_CA (with FWLEDGER_TLS_CERT/KEY as
    the client's)."""
    import requests

    from .author.publish import publish_bundle

    account = _author_account(passphrase_file)
    c = _ctx()
    with requests.Session() as session:
        _client_tls(session)
        source = _header_source(anchors, trackers, verify_rpc, session)
        fn = _synced_node()
        res = publish_bundle(bundle, servers, c.registry().with_account(account), timeout=c.settings.timeout,
                             session=session, source=source, index=fn.index)
    out = res.to_json()
    emit(out, lambda: out_console.print(
        f"uploaded to {len(res.servers)} server(s); published header hash [bold]{out['header_hash']}[/] "
        f"(block {res.block}, tx {res.tx})"))
