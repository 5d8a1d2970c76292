"""The tracker server module's side of device admission (:mod:`entities.protocol.admission`).

Every request a device signs (heartbeat, results, plan, its own detail) passes :meth:`TrackerAdmissions.check`
first: an operator record or a manufacture certificate admits it, and the admission, not the
device's word, gives its hardware class and labels (``region``...). A heartbeat whose add-on boards
are not all listed by the admission is refused (``board_not_admitted``, in the device's history):
the tracker plans a device's components together (dependencies), so it plans none under a board
the operator did not admit. An unannounced device is
refused with ``not_admitted`` and queued for the operator (bounded, :class:`~entities.admission_store.AdmissionStore`);
it is never stored in the inventory, assessed, enrolled in a rollout, commanded or counted.

Operator records reach the tracker by ``POST /v1/admissions`` (each record signed by an operator
key: the request itself needs no other authority); a decommissioning takes the device out of
every rollout it waits in at once (:meth:`~.inventory.Inventory.forget_device`). With
``admission = "open"`` (a lab) every check passes and nothing is queued.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from entities.admission_store import MAX_RECORDS, AdmissionStore
from entities.protocol.admission import Admission, AdmissionError, NotAdmitted, load_certificate_authorities

from .config import TrackerConfig
from .inventory import DeviceRow, HeartbeatIn, Inventory, TrackerRefusal

__all__ = ["MAX_RECORDS", "TrackerAdmissions"]


class TrackerAdmissions:
    """See the module docstring.

    Raises (constructor):
        ConfigError: a manufacturer CA file is missing or corrupt; the store cannot be opened.
        IndexCorruption: the store is damaged.
    """

    def __init__(self, config: TrackerConfig, inventory: Inventory, *, hardware_known: Callable[[str], bool],
                 clock: Callable[[], float], log: logging.Logger) -> None:
        self.required = config.admission == "required"
        self.operators = tuple(config.operator_keys)
        self.cas = load_certificate_authorities(config.manufacturer_cas)
        self.store = AdmissionStore(config.data_dir / "admissions.sqlite", max_pending=config.max_pending)
        self.inventory = inventory
        self.hardware_known = hardware_known
        self.clock = clock
        self.log = log
        if not self.required:
            self._event("admission_open", warning="any key that signs is served as a device (lab mode)")

    def _event(self, name: str, **fields: Any) -> None:
        self.log.info(json.dumps({"event": name, **fields}, default=str, sort_keys=True))

    def close(self) -> None:
        self.store.close()

    def check(self, signer: str, device_id: str, *, hb: HeartbeatIn | None = None,
              addons: Sequence[str] | None = None) -> Admission | None:
        """The admission under which ``signer`` acts as ``device_id`` (None in open mode), carrying
        the add-on boards of ``hb`` (else ``addons``: those it reported before).

        A heartbeat from an unannounced device queues it for the operator.

        Raises:
            TrackerRefusal: ``not_admitted``, ``decommissioned``, ``rejected``,
                ``device_key_mismatch``, ``bad_certificate``, ``unknown_hardware``,
                ``board_not_admitted`` (the heartbeat names a board its admission does not list).
        """
        if not self.required:
            return None
        now = self.clock()
        try:
            known = self.store.get(device_id) is not None
            adm = self.store.check(device_id, signer, certificate=hb.certificate if hb is not None else None,
                                   cas=self.cas, hardware_known=self.hardware_known, now=now,
                                   addons=tuple(hb.addons) if hb is not None else addons)
        except NotAdmitted as refusal:
            message = str(refusal)
            if refusal.code == "not_admitted" and hb is not None:
                self.store.note_pending(device_id, signer, hb.hardware,
                                        {"location": hb.location, "components": sorted(hb.components)}, now)
                message += "; it waits in the operator's pending queue"
            if refusal.code == "board_not_admitted" and hb is not None:  # its history shows why it is not served
                self.inventory.log(now, device_id, "admission_refused", {"code": refusal.code, "message": message,
                                                                         "declared": {"addons": sorted(hb.addons)}})
            self._event("admission_refused", device_id=device_id, signer=signer, code=refusal.code)
            raise TrackerRefusal(refusal.code, message) from None
        if adm.source == "certificate" and not known:
            self._event("admitted_by_certificate", device_id=device_id, address=signer, hardware=adm.hardware,
                        issuer=adm.issuer)
        return adm

    def admitted_ids(self) -> set[str] | None:
        """Ids of the devices admitted now (None in open mode: every device)."""
        return self.store.admitted_ids() if self.required else None

    def entitled(self, rows: Sequence[DeviceRow]) -> list[DeviceRow]:
        """The inventory rows the tracker assesses: in required mode, admitted devices whose
        reported add-on boards their admission lists (a board dropped from an admission after the
        device reported it leaves the device out until it reports as admitted)."""
        if not self.required:
            return list(rows)
        boards = {a.device_id: set(a.addons) for a in self.store.all(status="admitted")}
        return [r for r in rows if r.device_id in boards and set(r.addons) <= boards[r.device_id]]

    def receive(self, records: Sequence[Any]) -> dict[str, Any]:
        """Apply operator records (``POST /v1/admissions``): all verify or none is applied.

        Returns ``{"applied", "stale", "results": [{"device_id", "serial", "outcome"}]}``.

        Raises:
            TrackerRefusal: ``bad_admission``/``bad_labels``/``bad_addons`` (malformed), ``bad_signature``,
                ``unknown_operator`` (not signed by one of ``operator_keys``), ``too_large``.
        """
        now = self.clock()
        try:
            applied, out = self.store.receive(records, self.operators, now)
        except AdmissionError as exc:
            raise TrackerRefusal(exc.code, str(exc)) from None
        for adm in applied:
            self._event("admission", device_id=adm.device_id, status=adm.status, address=adm.address,
                        hardware=adm.hardware, labels=dict(adm.labels), addons=list(adm.addons), serial=adm.serial,
                        issuer=adm.issuer)
            if adm.admitted:  # the device's history (.history): admitted, relabelled, re-keyed
                self.inventory.log(now, adm.device_id, "admission_record", {
                    "status": adm.status, "address": adm.address, "hardware": adm.hardware,
                    "labels": dict(adm.labels), "addons": list(adm.addons), "serial": adm.serial,
                    "issuer": adm.issuer})
                row = self.inventory.device(adm.device_id)
                if row is not None and not set(row.addons) <= set(adm.addons):  # a board it reported was dropped
                    self.inventory.forget_device(adm.device_id, now, "board_not_admitted")
            else:
                self.inventory.forget_device(adm.device_id, now, "decommissioned")
        return out

    def labels(self) -> dict[str, dict[str, str]]:
        """Each device's labels as its admission gives them (operator record or certificate)."""
        return {a.device_id: dict(a.labels) for a in self.store.all()}

    def with_labels(self, rows: list[dict[str, Any]], wanted: Mapping[str, str] | None = None
                    ) -> list[dict[str, Any]]:
        """Device rows (``device_id``) given their admission's ``labels``; with ``wanted``, only
        those carrying every one of those labels."""
        labels = self.labels()
        out = []
        for row in rows:
            have = labels.get(str(row["device_id"]), {})
            if wanted and any(have.get(k) != v for k, v in wanted.items()):
                continue
            out.append({**row, "labels": have})
        return out

    def listing(self) -> dict[str, Any]:
        """Every admission (operator records and certificate admissions), the counts, the mode."""
        return {"mode": "required" if self.required else "open", "counts": self.store.counts(),
                "admissions": [a.to_json() for a in self.store.all()]}

    def pending(self, limit: int = 1000) -> list[dict[str, Any]]:
        return self.store.pending(limit)

    def reject(self, device_id: str, address: str | None, by: str) -> dict[str, Any]:
        """The operator rejects a pending device (every key queued for the id, or one).

        Raises:
            TrackerRefusal: ``unknown_device`` (nothing pending for that id and no address given).
        """
        n = self.store.reject(device_id, address, by, self.clock())
        if n == 0:
            raise TrackerRefusal("unknown_device", f"no pending device {device_id}")
        self._event("admission_rejected", device_id=device_id, address=address, by=by, keys=n)
        return {"device_id": device_id, "rejected": n}
