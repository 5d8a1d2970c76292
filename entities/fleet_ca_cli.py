"""``fwledger fleet ca-init|issue``: the fleet CA of the modules' mutual TLS (docs/MODULES.md 5), a
manufacturer CA (``fleet certify``), and the certificates the fleet CA issues to modules,
operators, firmware servers and devices (:mod:`entities.fleet_ca`)."""

from __future__ import annotations

from pathlib import Path

import click

from .cli import _ctx, emit, err_console, fleet, json_option


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
