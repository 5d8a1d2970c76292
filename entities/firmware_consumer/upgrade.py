"""One upgrade of a pass, steps 3a-d of :meth:`.agent.Agent.check_and_update`: the release's
evidence at the pass's block (:func:`gather_evidence`), what the chain proves about it judged
before any download (:func:`precheck`, R10.a.i), the bundle header and payload from a firmware
server (:func:`fetch_header`, registering with it first, C11.3.d) and the updater
(:func:`install`, P3-P5), and the outcome in the upgrade's :class:`.report.UpgradeResult`
(:func:`record_done`, :func:`record_failed`).

No trust logic here: :mod:`.verify` judges the evidence, :class:`.updater.Updater` the bundle.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from entities.bundle import BundleHeader
from ledger_node.errors import ConfigError, FwledgerError
from ledger_node.record import Version

from .client import NetworkError, ServerRefused, server_from_link
from .errors import DeviceStorageError, InstallError, UpdateDeclined, UpdateRefused
from .memory import AgentMemory
from .provision import Provisioning
from .quorum import Block, evidence_at
from .report import UpgradeResult
from .server_client import ServerClient
from .status import FreshEvidence
from .updater import Updater, UpdateReport
from .verify import Evidence, check_hardware, check_release

if TYPE_CHECKING:
    from .agent import Agent

__all__ = ["class_for", "component_of", "fetch_header", "gather_evidence", "group_versions", "install", "precheck",
           "record_done", "record_failed", "register", "result_of"]


def component_of(prov: Provisioning, product: str, vendor: str) -> str | None:
    """The device's component that runs ``vendor``'s ``product`` (the first one provisioned), if any."""
    names = [n for n, b in prov.bindings.items() if b.product == product and b.vendor in (None, vendor)]
    return names[0] if names else None


def result_of(prov: Provisioning, upgrade: Mapping[str, Any]) -> UpgradeResult:
    """A result, not tried yet, for one upgrade of a plan or command (its header hash at least)."""
    product, vendor = str(upgrade.get("product", "")), str(upgrade.get("vendor", ""))
    return UpgradeResult(product, vendor, str(upgrade.get("to_version", "")),
                         str(upgrade["header_hash"]).lower(), component=component_of(prov, product, vendor))


def class_for(prov: Provisioning, up: Updater, component: str | None) -> str:
    """The hardware class a component's releases are proven for: its add-on board's, else the device's."""
    board = prov.board_of(component) if component is not None else None
    return board if board is not None else up.device.info.hardware


def group_versions(prov: Provisioning, upgrades: Sequence[Mapping[str, Any]], groups: Mapping[str, list[str]]
                   ) -> dict[str, dict[str, Version]]:
    """Per product, the versions the other members of its install group (a dependency cycle)
    will have, by component: they are installed together, so each is checked against the
    others' new versions; every other dependency is installed first and counts as installed."""
    versions = {str(u["product"]): str(u["to_version"]) for u in upgrades if "product" in u and "to_version" in u}
    out: dict[str, dict[str, Version]] = {}
    for product, others in groups.items():
        out[product] = {name: Version.parse(versions[o]) for o in others if o in versions
                        for name, b in prov.bindings.items() if b.product == o}
    return out


def gather_evidence(prov: Provisioning, block: Block, result: UpgradeResult, hardware: str) -> Evidence:
    """3a: the evidence of one release at the pass's block, with every tracker's attestation of
    it; ``result`` takes the product, vendor and version of the record it carries.

    Raises:
        NetworkError, UpdateRefused (``bad_evidence``).
    """
    ev = evidence_at(block, bytes.fromhex(result.header_hash[2:]), hardware)
    d = ev.record.data
    result.product, result.vendor, result.version = d.product, d.vendor_name, str(d.version)
    result.component = component_of(prov, d.product, d.vendor_name)
    return ev


def precheck(prov: Provisioning, up: Updater, ev: Evidence, component: str | None, now: float) -> None:
    """3b: what the chain proves (k of n attested header, proofs, not revoked or vulnerable, the
    newest for the component's class, policy, vendor), judged before a byte is downloaded
    (R10.a.i, R10.e.i). The class is the add-on board's for a component running on one.

    Raises:
        UpdateRefused: the first check that fails (:func:`.verify.check_release`).
    """
    check_release(prov.anchors, class_for(prov, up, component), ev, now=now)
    if component is not None:  # a release for a class it does not run on: no download either
        check_hardware(up.facts(), component, ev.record)


def install(agent: Agent, up: Updater, ev: Evidence, result: UpgradeResult, planned: Mapping[str, Version], *,
            fresh: FreshEvidence | None = None) -> None:
    """3c-d: header and payload from a firmware server, then the updater (which verifies all
    before installing, proves the release's standing again from ``fresh`` before the trial
    boot and the confirm, and records its outcome in the device state). An image of this
    release staged at an earlier pass (its standing unproven then) is booted with no new
    download, its standing proven from ``ev`` (this pass's). Fills ``result``.

    Raises:
        NetworkError: no server served the header, or the payload's download failed.
        UpdateRefused, UpdateDeclined, InstallError, ConfigError: as :meth:`.updater.Updater.update`.
    """
    component = result.component
    if component is None:
        raise UpdateRefused("wrong_product", f"no component of this device runs {result.vendor}/{result.product}")
    hh = ev.record.header_hash
    client, header = fetch_header(agent, up, ev)                                        # P3, P4
    if up.staged(component, hh) is not None:  # downloaded at an earlier pass, not booted yet
        record_done(agent.memory, result, up.boot_staged(header, ev, component=component, planned=planned,
                                                         fresh=fresh))
        return
    stream = client.bundle(hh, header)
    try:
        rep = up.update(cast(BinaryIO, stream), ev, component=component, planned=planned,  # P5
                        recover=up.device.state(component).safe_mode,  # safe mode: a recovery install
                        fresh=fresh)
    finally:
        stream.close()
        result.download = stream.to_json()
    record_done(agent.memory, result, rep)


def fetch_header(agent: Agent, up: Updater, ev: Evidence) -> tuple[ServerClient, BundleHeader]:
    """3c: the first server that serves the release's bundle header: the configured servers,
    then the one the record's ``file_link`` names. Registers with a server first (once).

    Raises:
        NetworkError, UpdateRefused (``bad_bundle``): the last server's error when none served it.
    """
    urls = list(agent.config.servers)
    linked = server_from_link(ev.record.data.file_link)
    if linked is not None and linked not in urls:
        urls.append(linked)
    last: FwledgerError = NetworkError("no firmware server to ask: the record's file_link names none and "
                                       "none was given (--server)", code="no_server")
    for url in urls:
        client = agent.server(url)
        try:
            register(agent, up, client)
            try:
                return client, client.header(ev.record.header_hash)
            except ServerRefused as exc:
                if exc.code != "unregistered_device":
                    raise
                register(agent, up, client, force=True)  # the server forgot the device: register again
                return client, client.header(ev.record.header_hash)
        except (NetworkError, UpdateRefused) as exc:
            last = exc
    raise last


def register(agent: Agent, up: Updater, client: ServerClient, *, force: bool = False) -> None:
    """Register the device with a server once (C11.3.d): again only if its class or location
    changed, or the server has forgotten it (``force``). The agent's memory keeps what each
    server was told.

    Raises:
        NetworkError: the server refused or could not be reached.
    """
    info = up.device.info
    want: dict[str, Any] = {"device_id": info.device_id, "hardware": info.hardware,
                            "location": agent.config.location}
    if agent.prov.addons:  # the add-on boards whose firmware it downloads (Appendix II)
        want["addons"] = sorted(agent.prov.addons)
    state = agent.memory.read()
    servers = state.setdefault("servers", {})
    if not force and servers.get(client.url) == want:
        return
    client.register(info.device_id, info.hardware, agent.config.location, certificate=agent.prov.certificate,
                    addons=want.get("addons", ()))
    servers[client.url] = want
    agent.memory.save(state)


def record_done(memory: AgentMemory, result: UpgradeResult, rep: UpdateReport) -> None:
    """The updater's report in ``result``; an installed component's vendor in the agent's memory
    (the heartbeat names it)."""
    js = rep.to_json()
    result.ok, result.outcome, result.code = rep.ok, rep.outcome, rep.code
    result.message = (f"{js['component']} {js['version']} installed in slot {js['slot']}; {rep.outcome}"
                      + (f" ({rep.code})" if rep.code else ""))
    result.report = js
    result.installed_at = rep.installed_at
    if rep.ok and result.component is not None:
        state = memory.read()
        state.setdefault("vendors", {})[result.component] = result.vendor
        memory.save(state)


def record_failed(up: Updater, result: UpgradeResult, exc: FwledgerError) -> None:
    """An upgrade that failed: its code in the result, and in the component's state when the
    updater did not record it itself (network, evidence, pre-download checks)."""
    code = str(getattr(exc, "code", None) or "update_failed")
    if isinstance(exc, ConfigError):  # the updater's word for a bundle it could not read
        code = "download_failed"
    result.ok, result.code, result.message = False, code, " ".join(str(exc).split())
    # the updater was entered (its stream was opened) and records these itself
    entered = result.download is not None
    if result.component is None or (entered and isinstance(exc, (UpdateRefused, UpdateDeclined, InstallError,
                                                                      ConfigError))):
        return
    with contextlib.suppress(DeviceStorageError):  # the original failure matters more
        up.device.record_result(result.component, "update", code, result.message[:500], result.version)
