"""The firmware consumer's update: X.1368 clause 7 P3-P5 as one short ordered list of steps.

:meth:`Updater.update` reads like Figure 1 from the consumer's side: take the image from wherever
it came (a server, a tracker, a file: none trusted), verify everything (:mod:`.verify`, pure),
let the device decline (C11.1.a.vi), unwrap the content key with the hardware class key, stream
the payload through the record's checks and decrypt it into the inactive slot, prove the
release's standing again at a fresh header (:mod:`.status`: it may have been revoked while the
payload came), trial-boot it with the health check (confirm, or revert automatically: R10.c.ii;
the standing proven once more before the confirm), and record the outcome in the device state for
the tracker (R10.c.i). Everything here is I/O and sequencing; every trust
decision is in :mod:`.verify`, and every payload check in ``entities.bundle``.

Guarantees:

- Nothing is written before verification passes; a refusal leaves the slots and the boot state
  (slots, active slot, attempts, counter, safe mode) as they were and records the refusal's code
  as the component's last result.
- The payload is read in 64 KiB chunks, each authenticated (AES-GCM) before its plaintext is
  written, never more than the record's ``file_size`` bytes plus one (to refuse trailing data);
  the record's SHA-256 and Merkle root are checked at the end, and a payload failure abandons
  the install (its slot is emptied; the active slot is never written).
- Nothing is trial-booted or confirmed on stale knowledge: right before the trial boot and
  again right before the confirm, the release's standing is proven from fresh evidence at a
  header no older than the maximum header age. A changed standing (``revoked``, ``vulnerable``,
  ...) gives the install up: the staged image is dropped unbooted, a trial is reverted to the
  confirmed slot. No verdict (``status_unproven``: no fresh evidence, a stale header) commits
  nothing and keeps the image staged; :meth:`Updater.boot_staged` boots it at a later pass with no
  new download (a health-checked trial that cannot be proven again before its confirm is
  reverted with that code: never confirmed on stale knowledge).
- A power cut (or a lost connection, which first checkpoints what was written) mid-install leaves
  the install journaled: the same update run again resumes at the last durable checkpoint. On
  resume the slot's durable plaintext is read back and sealed again under this bundle's content
  key for the record's check, and only the rest of the payload is read (a seek, or a ``Range``
  request to the server); the record's size, SHA-256 and Merkle root still cover the whole
  payload, so a resumed install cannot mix two payloads or keep a damaged slot.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

from entities.bundle import (
    PLAIN_CHUNK,
    BundleError,
    BundleHeader,
    decrypt_payload,
    read_header,
    unwrap_content_key,
)
from ledger_node.errors import ConfigError
from ledger_node.record import Version

from .decline import CommandVeto, Decision, UpdatePolicy
from .device import BootOutcome, Device, InstallSession
from .errors import (
    BadInstallRequest,
    DeviceError,
    DeviceStorageError,
    InstallError,
    NotInTrial,
    StatusUnproven,
    UnknownComponent,
    UpdateDeclined,
    UpdateRefused,
)
from .provision import ComponentBinding, Provisioning
from .state import Slot, SlotStatus, normalize_header_hash, unverified_slot
from .status import FreshEvidence, Standing, reprove
from .store import atomic_write, make_folder, read_bounded
from .verify import (
    ComponentFacts,
    DeviceFacts,
    Evidence,
    TrustAnchors,
    VerifiedUpdate,
    assess_release,
    verify_update,
)

__all__ = [
    "CommandVeto",
    "Decision",
    "UpdatePolicy",
    "UpdateReport",
    "Updater",
]

#: where the updater keeps how often each release was deferred
DEFERRALS_FILE = Path("updater") / "deferrals.json"


# ----------------------------------------------------------------------------- report


@dataclass(frozen=True)
class UpdateReport:
    """What an update did, for the caller and the tracker (P5: the consumer reports the image status)."""

    verified: VerifiedUpdate
    slot: str
    resumed_from: int
    boot: BootOutcome
    code: str | None
    seconds: Mapping[str, float] = field(default_factory=dict)
    #: ``time.monotonic()`` when the image was installed (its slot pending, before the trial boot)
    installed_at: float | None = None

    @property
    def outcome(self) -> str:
        """``confirmed`` (trial passed), ``trial`` (awaiting a confirm), ``reverted`` or ``safe``."""
        if self.boot.confirmed:
            return "confirmed"
        if self.boot.reverted:
            return "reverted"
        return self.boot.kind.value if self.boot.kind.value == "safe" else "trial"

    @property
    def ok(self) -> bool:
        return self.outcome in ("confirmed", "trial")

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "outcome": self.outcome, "code": self.code, **self.verified.to_json(),
                "slot": self.slot, "resumed_from": self.resumed_from, "boot": self.boot.to_json(),
                "seconds": {k: round(v, 4) for k, v in self.seconds.items()}}


@dataclass
class _Target:
    component: str | None = None
    version: str | None = None


class _SlotWriter:
    """``write()`` into an install session in order, skipping what a resumed session already holds
    (the session hashes the slot's bytes as they pass: :class:`.install_session.InstallSession`)."""

    def __init__(self, session: InstallSession) -> None:
        self.session = session
        self.pos = 0

    def write(self, data: bytes) -> int:
        end = self.pos + len(data)
        if end > self.session.offset:
            self.session.write_chunk(self.pos, data)
        self.pos = end
        return len(data)


# ----------------------------------------------------------------------------- the updater


class Updater:
    """One device's update pipeline (see the module docstring).

    ``device`` is an opened (locked) :class:`Device`; its health check decides trial boots.
    ``clock`` gives the time the header's age and the maintenance window are judged by.
    """

    def __init__(self, device: Device, anchors: TrustAnchors, class_private_key: bytes, *,
                 bindings: Mapping[str, ComponentBinding] | None = None, policy: UpdatePolicy | None = None,
                 clock: Callable[[], float] = time.time, board_keys: Mapping[str, bytes] | None = None) -> None:
        anchors.validate()
        self.device = device
        self.anchors = anchors
        self._class_key = class_private_key
        self._board_keys = dict(board_keys or {})  # add-on boards' class keys, by board (hardware class id)
        self.bindings = dict(bindings or {})
        self.policy = policy or UpdatePolicy()
        self.clock = clock

    @classmethod
    def from_provisioning(cls, device: Device, prov: Provisioning, *, policy: UpdatePolicy | None = None,
                          clock: Callable[[], float] = time.time) -> Updater:
        """The updater of a provisioned device folder (anchors, bindings, class key, update policy).

        Raises:
            ConfigError: a malformed update policy.
        """
        return cls(device, prov.anchors, prov.class_private_key, bindings=prov.bindings,
                   policy=policy or UpdatePolicy.from_json(prov.update_policy), clock=clock,
                   board_keys=prov.addon_keys)

    # -- X.1368 clause 7, P3-P5 -----------------------------------------------------------------

    def update(self, bundle: Path | str | BinaryIO, evidence: Evidence | Mapping[str, Any], *,
               component: str | None = None, planned: Mapping[str, Version] | None = None,
               recover: bool = False, fresh: FreshEvidence | None = None) -> UpdateReport:
        """Verify, install, trial-boot and report one update (``recover``: safe mode's manual install, C11.1.b).

        ``fresh`` gives evidence of the release at a newer header (the agent asks its trackers):
        the release's standing is proven from it again before the trial boot and before the
        confirm (:mod:`.status`); without it, ``evidence`` is judged again then (so it must still
        be no older than the maximum header age).

        Raises:
            UpdateRefused: a check failed (its ``code``); nothing of the active slot or boot state
                changed. After the download, the release's standing changed (``revoked``...):
                the staged image is dropped, never booted.
            StatusUnproven: the standing could not be proven again before the trial boot; the
                image stays staged (:meth:`boot_staged`).
            UpdateDeclined: the device's policy declined the update (C11.1.a.vi).
            InstallError: the device refused the install (safe mode, trial in progress, rollback...).
            UnknownComponent: no such component.
            ConfigError: the bundle could not be read (an interrupted install stays resumable).
            DeviceStorageError: the device's disk failed.
        """
        t: dict[str, float] = {}
        with self._source(bundle) as stream, self._reported(component) as target:
            header = self._read_header(stream)                                  # P3: the image, from any source
            target.component = self._component_for(header, component)
            t["verify"] = -time.perf_counter()
            ev = evidence if isinstance(evidence, Evidence) else Evidence.from_json(evidence)
            verified = self._verify(header, ev, target.component, planned)       # P5: verify all, install nothing
            t["verify"] += time.perf_counter()
            target.version = str(verified.version)
            self._consent(verified)                                             # C11.1.a.vi: the device may decline
            key = self._content_key(verified)                                   # class key unwraps the content key
            t["install"] = -time.perf_counter()
            slot, resumed_from = self._install(verified, key, stream, recover=recover)  # the inactive slot only
            t["install"] += time.perf_counter()
            installed_at = time.monotonic()
            again = fresh or _given(ev)
            t["boot"] = -time.perf_counter()
            boot = self._trial(verified, again, again)  # standing proven again; trial: confirm or revert (R10.c.ii)
            t["boot"] += time.perf_counter()
        return self._report(verified, slot, resumed_from, boot, t, installed_at)  # the outcome, recorded (R10.c.i)

    def boot_staged(self, header: BundleHeader, evidence: Evidence | Mapping[str, Any], *,
                    component: str | None = None, planned: Mapping[str, Version] | None = None,
                    fresh: FreshEvidence | None = None) -> UpdateReport:
        """Trial-boot the image an earlier :meth:`update` staged but could not boot (its standing
        unproven then), with no new download: verified again like an update (``header``: the
        bundle's header), found staged (``pending``, same header hash), its standing proven from
        ``evidence`` (fresh: the caller's, at this pass's block) and again from ``fresh`` before
        the confirm.

        Raises:
            BadInstallRequest: no image of this release is staged.
            (and everything :meth:`update` raises but a download's errors)
        """
        with self._reported(component) as target:
            target.component = self._component_for(header, component)
            ev = evidence if isinstance(evidence, Evidence) else Evidence.from_json(evidence)
            verified = self._verify(header, ev, target.component, planned)
            target.version = str(verified.version)
            slot = self.staged(verified.component, verified.header_hash)
            if slot is None:
                raise BadInstallRequest(f"{verified.component}: no image of {verified.version} is staged")
            boot = self._trial(verified, _given(ev), fresh or _given(ev))
        return self._report(verified, slot, verified.bundle.encryption.plaintext_size, boot, {})

    def staged(self, component: str, header_hash: bytes) -> Slot | None:
        """The slot holding release ``header_hash`` of ``component`` installed and not booted yet, if any.

        Raises:
            UnknownComponent: no such component.
        """
        st = self.device.state(component)
        t = st.trial
        if t is None or st.slot(t).status is not SlotStatus.PENDING:
            return None
        return t if st.slot(t).header_hash == normalize_header_hash(header_hash) else None

    def confirm_trial(self, component: str, fresh: FreshEvidence) -> Standing:
        """Confirm the image running on trial (a device without a health check) once its release's
        standing is proven again from ``fresh`` at a header no older than the maximum header age
        (:mod:`.status`). A changed standing reverts it to the confirmed slot, its code the last
        result; no verdict leaves it running unconfirmed (``status_unproven`` recorded) for the
        next pass. Returns the verdict.

        Raises:
            NotInTrial: nothing runs on trial.
            UnknownComponent, DeviceStorageError.
        """
        st = self.device.state(component)
        t = st.trial
        if t is None or st.slot(t).status is not SlotStatus.TRIAL:
            raise NotInTrial(f"{component}: no image is running on trial")
        info = st.slot(t)
        standing = self._standing(component, info.header_hash, fresh)
        if standing.ok:
            self.device.confirm(component)
        elif standing.final:
            self.device.revert(component, str(standing.code), standing.message)
        else:
            self.device.record_result(component, "confirm", standing.code, standing.message[:500], info.version)
        return standing

    def boot_trial(self, component: str, fresh: FreshEvidence) -> BootOutcome:
        """A power-on of a component whose image runs on trial: one more trial boot, and with a
        health check that passes, its standing proven again from ``fresh`` before the confirm
        (else reverted with the verdict's code).

        Raises:
            UnknownComponent, DeviceStorageError.
        """
        st = self.device.state(component)
        t = st.trial
        hh = st.slot(t).header_hash if t is not None else None
        return self.device.boot_component(component, before_confirm=self._gate(component, hh, fresh))

    def recover(self, bundle: Path | str | BinaryIO, evidence: Evidence | Mapping[str, Any], *,
                component: str | None = None) -> UpdateReport:
        """Safe mode's manual install (C11.1.b): the same verification, then a trial boot.

        Raises:
            NotInSafeMode: the component is not in safe mode.
            (and everything :meth:`update` raises)
        """
        return self.update(bundle, evidence, component=component, recover=True)

    # -- device facts and needs (C11.1.a.ii, a.iv) -------------------------------------------------

    def facts(self) -> DeviceFacts:
        """The device's hardware class and, per component, its line, installed version and counter
        (an unverified factory image counts as nothing installed).

        Raises:
            StateCorrupt: a component's state is unreadable (a boot resets it into safe mode).
        """
        comps = []
        for name in self.device.components:
            b = self.bindings.get(name, ComponentBinding(name))
            st = self.device.state(name)
            c = st.confirmed
            # an unverified factory image is no installed release: anything proven may replace it
            version = st.slot(c).version if c is not None and unverified_slot(st) is None else None
            comps.append(ComponentFacts(name, b.product, b.vendor, Version.parse(version) if version else None,
                                        Version.parse(st.counter), b.board))
        return DeviceFacts(self.device.info.hardware, tuple(comps))

    def needs_update(self, evidence: Evidence | Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What the device tells its tracker (C11.1.a.iv): versions, mode, last result, and whether it needs an update.

        A component needs one when it is in safe mode or has no image; with ``evidence`` of a
        release, also when that release is proven, newer, and fits the device (:func:`assess_release`).
        """
        comps = []
        for c in self.facts().components:
            st = self.device.state(c.name)
            why = ("safe_mode" if st.safe_mode else "no_image" if st.confirmed is None and st.trial is None
                   else "unverified" if st.trial is None and unverified_slot(st) is not None else None)
            comps.append({"name": c.name, "product": c.product, "vendor": c.vendor,
                          "version": str(c.installed) if c.installed else None, "counter": str(c.counter),
                          "mode": st.mode, "needs_update": why is not None, "reason": why,
                          "last_result": None if st.last_result is None else st.last_result.to_json()})
        release = None
        if evidence is not None:
            ev = evidence if isinstance(evidence, Evidence) else Evidence.from_json(evidence)
            release = assess_release(self.anchors, self.facts(), ev, now=self.clock())
            for comp in comps:
                if release["needed"] and comp["name"] == release["component"]:
                    comp.update(needs_update=True, reason=f"newer_release {release['version']}")
        return {"device": self.device.info.device_id, "hardware": self.device.info.hardware,
                "needs_update": any(c["needs_update"] for c in comps), "components": comps, "release": release}

    # -- steps ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _source(self, bundle: Path | str | BinaryIO) -> Iterator[BinaryIO]:
        if isinstance(bundle, str | Path):
            try:
                fh = open(bundle, "rb")  # closed by the with below
            except OSError as exc:
                raise ConfigError(f"cannot open bundle {bundle}: {exc.strerror or exc}") from exc
            with fh:
                yield fh
        else:
            yield bundle

    @contextlib.contextmanager
    def _reported(self, component: str | None) -> Iterator[_Target]:
        """Record a failed update's code as the component's last result (R10.c.i)."""
        target = _Target(component)
        try:
            yield target
        except (UpdateRefused, UpdateDeclined, InstallError) as exc:
            self._record(target, exc.code, str(exc))
            raise
        except ConfigError as exc:  # the bundle could not be read: a transport failure
            self._record(target, "download_failed", str(exc))
            raise

    def _record(self, target: _Target, code: str, message: str) -> None:
        if target.component is None or target.component not in self.device.components:
            return
        with contextlib.suppress(DeviceStorageError):  # the original error matters more
            self.device.record_result(target.component, "update", code, message, target.version)

    @staticmethod
    def _read_header(stream: BinaryIO) -> BundleHeader:
        try:
            header, _ = read_header(stream)
        except BundleError as exc:
            raise UpdateRefused(exc.code, str(exc)) from exc
        return header

    def _component_for(self, header: BundleHeader, component: str | None) -> str:
        if component is not None:
            if component not in self.device.components:
                raise UnknownComponent(f"{self.device.info.device_id} has no component {component!r}")
            return component
        d = header.record.data
        names = [c.name for c in self.facts().bound_to(d.vendor_name, d.product)]
        if not names:
            raise UpdateRefused("wrong_product", f"no component of this device runs {d.vendor_name}/{d.product}")
        if len(names) > 1:
            raise BadInstallRequest(f"components {', '.join(names)} run {d.product}: name one")
        return names[0]

    def _verify(self, header: BundleHeader, ev: Evidence, component: str,
                planned: Mapping[str, Version] | None) -> VerifiedUpdate:
        return verify_update(self.anchors, self.facts(), component, header, ev, now=self.clock(), planned=planned)

    def _standing(self, component: str, header_hash: str | None, fetch: FreshEvidence) -> Standing:
        """The standing of the release ``header_hash`` (hex) of ``component``'s class (:func:`.status.reprove`)."""
        if header_hash is None:
            return Standing("status_unproven", "the image names no release to prove")
        return reprove(self.anchors, self.facts().class_of(component), bytes.fromhex(header_hash[2:]), fetch,
                       clock=self.clock)

    def _gate(self, component: str, header_hash: str | None,
              fetch: FreshEvidence) -> Callable[[], tuple[str, str] | None]:
        """The device's question before a confirm: the standing again, a code to revert with or None."""
        def gate() -> tuple[str, str] | None:
            again = self._standing(component, header_hash, fetch)
            return None if again.ok else (str(again.code), again.message)
        return gate

    def _trial(self, update: VerifiedUpdate, before: FreshEvidence, again: FreshEvidence) -> BootOutcome:
        """The staged image's standing proven from ``before``, then its trial boot, the standing
        proven from ``again`` before a confirm (:mod:`.status`).

        Raises:
            UpdateRefused: the standing changed (the image dropped, never booted).
            StatusUnproven: no verdict (the image stays staged).
        """
        hh = normalize_header_hash(update.header_hash)
        standing = self._standing(update.component, hh, before)
        if standing.final:  # given up: the staged slot is marked bad, the running slot untouched
            self.device.revert(update.component, str(standing.code), standing.message)
            raise UpdateRefused(str(standing.code), standing.message)
        if not standing.ok:
            raise StatusUnproven(f"{update.component} {update.version} stays staged, not booted: {standing.message}")
        return self.device.boot_component(update.component, before_confirm=self._gate(update.component, hh, again))

    def _consent(self, update: VerifiedUpdate) -> None:
        key = "0x" + update.header_hash.hex()
        counts = self._deferrals()
        decision = self.policy.decide(update, now=self.clock(), deferred=counts.get(key, 0))
        if not decision.install:
            assert decision.code is not None
            if decision.code == "outside_maintenance_window":
                counts[key] = counts.get(key, 0) + 1
                self._save_deferrals(counts)
            raise UpdateDeclined(decision.code, decision.reason)

    def _content_key(self, update: VerifiedUpdate) -> bytes:
        try:
            return unwrap_content_key(update.bundle.encryption, update.hardware, self._key_of(update.hardware))
        except BundleError as exc:
            raise UpdateRefused(exc.code, str(exc)) from exc

    def _key_of(self, hardware: str) -> bytes:
        """The X25519 class key of ``hardware``: an add-on board's, else the device's own."""
        return self._board_keys.get(hardware, self._class_key)

    def _install(self, update: VerifiedUpdate, key: bytes, stream: BinaryIO, *, recover: bool) -> tuple[str, int]:
        """Stream, check and decrypt the payload into the inactive slot; the slot then awaits its trial."""
        begin = self.device.recover if recover else self.device.begin_install
        size = update.bundle.encryption.plaintext_size
        prefetch = getattr(stream, "prefetch", None)  # a server's payload stream (server_client.PayloadStream)
        if prefetch is not None and self.device.install_offset(update.component, str(update.version),
                                                               update.header_hash, size, recover=recover) == 0:
            prefetch()  # a new install: the payload request travels while begin makes the slot ready
        session = begin(update.component, str(update.version), update.header_hash, size)
        slot, resumed_from = session.slot, session.offset
        writer = _SlotWriter(session)
        # a resumed install's durable plaintext is sealed again and checked with the rest: only the
        # rest of the payload is read (from a server: a Range request for it)
        staged = resumed_from - resumed_from % PLAIN_CHUNK
        try:
            decrypt_payload(update.bundle, stream, cast(BinaryIO, writer), hw_id=update.hardware,
                            class_private_key=self._key_of(update.hardware),
                            staged=session.read_durable() if staged else (), staged_size=staged)
        except BundleError as exc:  # a bad payload: the install is abandoned, its slot emptied
            session.abandon(code=exc.code, message=str(exc))
            raise UpdateRefused(exc.code, str(exc)) from exc
        except Exception:  # lost connection, unreadable source: what is written is kept for the next pass
            with contextlib.suppress(DeviceError):
                session.checkpoint()
            session.close()
            raise
        except BaseException:  # power cut: resumable from the last checkpoint
            session.close()
            raise
        session.finish(None)  # the bytes passed the payload checks; the session hashed them as written
        self._save_deferrals({})
        return slot, resumed_from

    def _report(self, update: VerifiedUpdate, slot: str, resumed_from: int, boot: BootOutcome,
                t: Mapping[str, float], installed_at: float | None = None) -> UpdateReport:
        st = self.device.state(update.component)
        code = None if boot.confirmed or st.last_result is None or st.last_result.ok else st.last_result.code
        return UpdateReport(update, slot, resumed_from, boot, code, dict(t), installed_at)

    # -- deferral counts ---------------------------------------------------------------------------

    def _deferrals(self) -> dict[str, int]:
        try:
            data = read_bounded(self.device.layout.root / DEFERRALS_FILE)
            obj = json.loads(data) if data else {}
        except (ValueError, DeviceStorageError):
            return {}
        return {str(k): int(v) for k, v in obj.items() if isinstance(v, int)} if isinstance(obj, dict) else {}

    def _save_deferrals(self, counts: Mapping[str, int]) -> None:
        path = self.device.layout.root / DEFERRALS_FILE
        if not counts and not path.exists():
            return
        make_folder(path.parent)  # durable: its entry in the device folder synced
        atomic_write(path, (json.dumps(dict(counts), sort_keys=True) + "\n").encode())


def _given(ev: Evidence) -> FreshEvidence:
    """The evidence already in hand as the source of "fresh" evidence: judged again when asked."""
    def fetch(header_hash: bytes, hardware: str) -> Evidence:
        return ev
    return fetch
