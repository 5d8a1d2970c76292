"""``fwledger device ...``: the firmware consumer's commands (provisioning, verified updates, the agent)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ledger_node.errors import ConfigError, FwledgerError

from .cli import ADDRESS, LazyGroup, _ctx, cli, emit, json_option, load_key, out_console, quick_exit

__all__: list[str] = []  # click commands registered on their groups

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


@cli.group(cls=LazyGroup, contributors=("entities.anchors_cli",))  # device anchors-update
def device() -> None:
    """A device: firmware consumers that verify everything before installing (X.1368 P3-P5, C11.1)."""
    quick_exit()  # its processes end without the interpreter's teardown (entities.cli.main)


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
              help="NAME, NAME=PRODUCT or NAME=VENDOR/PRODUCT: a component and the product line it runs, "
                   "@BOARD: on that add-on board (repeat).")
@click.option("--addon", "addons", multiple=True, metavar="BOARD[@REVISION]",
              help="An add-on board the device carries: its hardware class id on the ledger (repeat).")
@click.option("--addon-class-key", "addon_keys", multiple=True, metavar="BOARD=FILE",
              help="An add-on board's class X25519 private key, as --class-key (one per --addon).")
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
@click.option("--factory", "factory", multiple=True, metavar="COMPONENT=BUNDLE",
              help="A factory image, verified like any update (ledger proofs, signature, size, Merkle root, hash, "
                   "decrypted with the class key) and placed confirmed in slot a (repeat).")
@click.option("--evidence", "factory_evidence", multiple=True, type=click.Path(exists=True, dir_okay=False,
                                                                                path_type=Path),
              help="Evidence for each --factory bundle, in order (fwledger device evidence) [BUNDLE.evidence.json].")
@click.option("--factory-image", "factory_image", multiple=True, metavar="COMPONENT=FILE",
              help="An UNVERIFIED factory image (plain bytes, no evidence): reported 'unverified', never up to "
                   "date; the tracker offers it the newest release (repeat).")
@click.option("--factory-version", "factory_version", multiple=True, metavar="[COMPONENT=]X.Y.Z",
              help="The version an --factory-image claims (one per image).")
@_device_tls_options
@json_option
@_device_errors
def device_init(root: Path, device_id: str, hardware: str, components: tuple[str, ...], addons: tuple[str, ...],
                addon_keys: tuple[str, ...], anchors_file: Path, class_key_file: Path | None,
                health_cmd: str | None, max_boot_attempts: int,
                relays: tuple[str, ...], intra_device: bool, factory: tuple[str, ...],
                factory_evidence: tuple[Path, ...], factory_image: tuple[str, ...], factory_version: tuple[str, ...],
                tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None) -> None:
    """Provision a device folder: identity key, class key, trust anchors, components with A/B slots
    (empty, or with a factory image: --factory verified, --factory-image unverified)."""
    import shlex

    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from ledger_node.fsutil import read_json

    from .firmware_consumer.anchors import serial_of
    from .firmware_consumer.provision import parse_addon_spec, parse_component_spec, provision_device
    from .firmware_consumer.verify import TrustAnchors

    doc = read_json(anchors_file)
    anchors = TrustAnchors.from_json(doc)
    serial = serial_of(doc, str(anchors_file))  # 0 unless the anchors file says (device anchors --serial)
    from .device_boot_cli import board_class_keys, factory_images, provisioning_cleanup, read_class_key

    if class_key_file is not None:
        class_key = read_class_key(class_key_file)
    else:
        class_key = X25519PrivateKey.generate().private_bytes_raw()
    bindings = dict(parse_component_spec(c) for c in components)
    boards, board_keys = [parse_addon_spec(a) for a in addons], board_class_keys(addon_keys)
    tls = _read_device_tls(tls_ca, tls_cert, tls_key)  # checked before anything is written
    if (factory or factory_image) and (root / "device.json").exists():
        from .firmware_consumer.errors import DeviceExists

        raise DeviceExists(f"{root} already holds a device")
    images = factory_images(factory=factory, evidence=factory_evidence, factory_image=factory_image,
                            factory_version=factory_version, anchors=anchors, hardware=hardware,
                            class_key=class_key, bindings=bindings,
                            board_keys=board_keys)  # verified before anything is written
    with provisioning_cleanup(root):
        prov = provision_device(root, device_id=device_id, hardware=hardware, components=bindings,
                                anchors=anchors, class_private_key=class_key, max_boot_attempts=max_boot_attempts,
                                health_command=shlex.split(health_cmd) if health_cmd else None, relays=relays,
                                intra_device=intra_device, tls=tls, anchors_serial=serial, factory=images,
                                addons=boards, addon_keys=board_keys)
    anchors = prov.anchors
    out = {"dir": str(root), "id": device_id, "hardware": hardware,
           "components": {n: b.to_json() for n, b in prov.bindings.items()},
           "addons": {b: a.to_json() for b, a in prov.addons.items()},
           "identity_address": prov.identity.address, "class_public_key": prov.class_public_key.hex(),
           "class_key_generated": class_key_file is None,
           "anchors": {"chain_id": anchors.chain_id, "registry": anchors.registry, "quorum": anchors.quorum,
                       "trackers": list(anchors.trackers), "relays": list(anchors.relays),
                       "max_header_age": anchors.max_header_age, "serial": serial},
           "intra_device": intra_device, "tls_ca": str(prov.tls_ca) if prov.tls_ca else None,
           "tls_cert": str(prov.tls_cert) if prov.tls_cert else None,
           "factory": {n: {"version": i.version, "verified": i.verified,
                           "header_hash": "0x" + bytes(i.header_hash).hex() if isinstance(i.header_hash, bytes)
                           else str(i.header_hash), "size": len(i.data)} for n, i in images.items()}}
    emit(out, lambda: out_console.print(
        f"device [bold]{device_id}[/] ({hardware}) in {root}: components {', '.join(prov.bindings)}; "
        f"identity {prov.identity.address}"
        + "".join(f"\n{n}: factory image {i.version} ({'verified' if i.verified else 'UNVERIFIED'})"
                  for n, i in images.items())
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
        comp["needs_update"] = bool(comp.get("safe_mode") or comp.get("firmware_state") in ("empty", "unverified"))
    out["needs_update"] = any(c["needs_update"] for c in out["components"])
    if evidence_file is not None:
        if prov is None:
            raise NotADevice(f"{root} has no trust anchors: it cannot judge evidence (provision it with device init)")
        with Device(root) as dev:
            out["release"] = Updater.from_provisioning(dev, prov).needs_update(
                _read_evidence(evidence_file, evidence_file))["release"]
        out["needs_update"] = out["needs_update"] or bool(out["release"]["needed"])

    def human() -> None:
        from rich.table import Table

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
    lines += [f"{name}: trial confirmed (booted and reached its tracker)" for name in report.confirmed]
    if not report.results and not report.refusals:
        lines += _held_lines(report)
    if not report.results and not report.refusals and not report.held:
        state = "outdated" if report.outdated else "up to date"
        lines.append(f"device {report.device_id}: nothing to install; {state}"
                     + (": " + "; ".join(report.reasons) if report.outdated and report.reasons else ""))
    return lines


def _held_lines(report: Any) -> list[str]:
    """The tracker's plan proposes upgrades its rollouts hold back: say which and why, with the
    device's own refusal of that release when it is the last thing that happened to it (a
    halted rollout after a refusal is no "nothing to install")."""
    out = []
    for h in report.held:
        failed = next((f for f in report.last_failures if f["product"] == h["product"]
                       and f["version"] == h["to_version"]), None)
        why = str(h.get("reason", "held")).replace("_", " ")
        if failed is not None:
            out.append(f"{h['product']} {h['to_version']} refused: {failed['code']} ({failed['message']}); "
                       f"the tracker holds it back now ({why})")
        else:
            out.append(f"{h['product']} {h['to_version']} held back by the tracker's rollout ({why})")
    return out


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
            def on_boot(b: Any) -> None:  # images on trial: starting the agent is a power-on
                line = {"boot": b.to_json()} if c.json_out else (
                    f"boot {b.component}: {b.kind.value} {b.version or ''} (attempt {b.attempt})"
                    + (f"; {', '.join(b.events)}" if b.events else ""))
                click.echo(json.dumps(line, default=str) if c.json_out else line, err=True)

            with _device_agent(root, trackers, servers, location, follow) as agent:
                agent.run(interval, stop, passes=passes, on_pass=on_pass, on_boot=on_boot)
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
@click.option("--serial", type=click.IntRange(min=0, max=(1 << 63) - 1), default=None,
              help="The anchors' serial: above the devices' current one for a rotation "
                   "(then fwledger fleet anchors-sign) [0 for provisioning].")
@click.option("--block-time", type=click.FloatRange(min=0), default=None,
              help="The chain's block interval, seconds, to check --max-age against [measured from its last "
                   "blocks].")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@json_option
@_device_errors
def device_anchors(trackers: tuple[str, ...], quorum: int, max_age: float, relays: tuple[str, ...],
                   serial: int | None, block_time: float | None, output: Path) -> None:
    """Write the trust anchors devices are provisioned with (or rotate to, with --serial), from this
    home's registry deployment."""
    from ledger_node.compiler import registry_contract
    from ledger_node.fsutil import atomic_write_json

    from .firmware_consumer.provision import anchors_from_deployment

    anchors = anchors_from_deployment(_ctx().deployment(), registry_contract(), trackers=trackers, quorum=quorum,
                                      max_header_age=max_age, relays=relays)
    doc = {**anchors.to_json(), **({"serial": serial} if serial else {})}
    atomic_write_json(output, doc)
    from .device_boot_cli import header_age_warnings

    warnings, chain = header_age_warnings(max_age, block_time)  # confirmations x block time (stale_header)
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    out = {"anchors": str(output), **doc, "warnings": warnings, "header_age": chain}
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


from . import device_boot_cli  # noqa: E402, F401  (device confirm, device revert)
