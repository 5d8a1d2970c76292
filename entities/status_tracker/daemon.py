"""The status tracker's server module (X.1368 clause 8 D8.2.2, C11.2, Appendix II full node).

:class:`Tracker` is the one orchestrator. Its main loop, :meth:`Tracker.cycle`, is clause 11.2
as a short ordered list of steps; requests from devices and triggering parties enter through
:meth:`Tracker.heartbeat` (C11.2.b) and :meth:`Tracker.trigger` (clause 9) and end in the same
assessment step. Trust decisions are pure functions of :mod:`.inventory` (triggers, readiness),
:mod:`.resolver` (plans, outdated lists) and :mod:`ledger_node.attestation` /
:mod:`ledger_node.lightnode` (what a device will check); this module sequences them and does the
I/O: the full node's sync, the inventory's SQLite, the node's headers and proofs.

What a tracker holds:

- its own secp256k1 key (``<data>/tracker.key`` unless configured): it signs header attestations
  (EIP-712 ``HeaderAttestation``) and every HTTP response (:mod:`.app`);
- a :class:`~ledger_node.fullnode.FullNode` over its own index ``<data>/ledger.sqlite``, synced
  by a background thread every ``poll_interval`` seconds (T9.d) and on demand;
- the inventory ``<data>/inventory.sqlite`` (:class:`~.inventory.Inventory`).

Both files are transactional, so a restart loses no device state and no chain event: the full
node resumes at its cursor, and the first cycle after a restart re-assesses the whole fleet.

Starting an update (P2-P5, docs/MODULES.md sections 2-4): each assessment enrols the devices
needing a release in that release's rollout (created on first need, settings from
``[tracker]``: ``waves``, ``halt_failure_rate``, ``halt_min_failures``); a heartbeat's answer
carries a signed update command (:mod:`entities.protocol.commands`) when the device needs an update, is
ready, and the rollout of every release in its plan admits it (it targets the device, its wave
is open, not halted or cancelled, inside its schedule); an outstanding unexpired command is
re-sent as is. The device's results (:meth:`Tracker.results`) update the rollout's counts,
which halts it above the failure threshold or opens the next wave (:mod:`.rollout`, pure);
administrators halt, resume, advance, cancel, target and schedule rollouts (T9.c;
:mod:`.rollout_ops`). Rollouts and commands live in the inventory and survive a restart.
Not in this module: intermediate and client modules (D8.2.1, D8.2.3) and mutual TLS.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address
from pydantic import ValidationError
from web3 import Web3

from entities.protocol.commands import new_command, sign_command
from entities.protocol.heartbeat import FIRMWARE_STATUSES, firmware_status
from entities.settings import load_or_create_key
from ledger_node.attestation import Attestation, attest
from ledger_node.compiler import CompiledContract, registry_contract
from ledger_node.errors import ChainError, ChainUnreachable, ConfigError, FwledgerError, ProofError
from ledger_node.fullnode import FullNode, Index, IndexedRelease
from ledger_node.header import BlockHeader
from ledger_node.lightnode import verify_release
from ledger_node.proofs import parse_proof_json
from ledger_node.providers import serialise_embedded
from ledger_node.registry import Deployment

from .admissions import TrackerAdmissions
from .concerned import ConcernedStore
from .config import TrackerConfig
from .evidence import MAX_SUCCESSORS, ChainReader, Evidence
from .inventory import (
    CLAUSE,
    Assessment,
    DeviceRow,
    HeartbeatIn,
    Inventory,
    LedgerFacts,
    ResultsIn,
    Source,
    TrackerRefusal,
    TriggerIn,
    check_party,
    judge_trigger,
)
from .observations import PendingObservations
from .ratelimit import RateLimiter
from .resolver import FindingKind, OutdatedReport, Resolver, catalog_from_index
from .rollout import RolloutSettings
from .rollout_ops import TrackerRollouts

__all__ = ["LedgerRound", "Tracker", "load_identity"]

_AT_RISK = frozenset({FindingKind.REVOKED, FindingKind.VULNERABLE, FindingKind.FLAGGED})
_ATTESTATION_CACHE = 256


def load_identity(path: Path) -> LocalAccount:
    """The tracker's key: read from ``path``, or created there (hex, mode 0600) on first start.

    Raises:
        ConfigError: the file exists but holds no usable key, or cannot be written.
    """
    return load_or_create_key(path)


def wave_key_of(account: LocalAccount) -> bytes:
    """The secret that keys a tracker's rollout wave buckets (:func:`.rollout.bucket`), derived
    from its identity key: stable across restarts, never published."""
    return hashlib.sha256(b"fwledger-waves-v1" + bytes(account.key)).digest()


@dataclass(frozen=True)
class LedgerRound:
    """One poll of the ledger: the cursor after it, and whether the catalog changed."""

    block: int | None
    events: int
    changed: bool
    error: str | None = None


def _finding_json(f: Any) -> dict[str, Any]:
    nothing = f.kind in (FindingKind.NO_FIRMWARE, FindingKind.UNVERIFIED)  # no proven version runs
    return {"product": f.product, "kind": str(f.kind), "installed": None if nothing else str(f.installed),
            "newest": None if f.newest is None else str(f.newest),
            "planned": None if f.planned is None else str(f.planned), "detail": f.detail}


class Tracker(TrackerRollouts):
    """The server module of a status tracker.

    Args:
        config: the tracker's settings (data folder, keys of administrators and servers...).
        w3: a connected ``Web3`` (an embedded chain is shared safely: requests are serialised).
        deployment: the registry's deployment record.
        confirmations, batch_blocks: the full node's (it attests only what it indexed).
        clock: seconds since the epoch (tests may pass their own).

    Raises:
        ConfigError: bad settings, the index belongs to another registry, unusable data folder.
        ChainError: the node failed to answer.
        IndexCorruption: the index or the inventory is damaged.
    """

    def __init__(self, config: TrackerConfig, w3: Web3, deployment: Deployment, *, confirmations: int = 0,
                 batch_blocks: int = 500, clock: Callable[[], float] = time.time,
                 compiled: CompiledContract | None = None, logger: logging.Logger | None = None) -> None:
        if config.role != "server":
            raise ConfigError(f"tracker role {config.role!r} is not built yet: only 'server' (D8.2.2) runs")
        try:
            Path(config.data_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create tracker data folder {config.data_dir}: {exc.strerror or exc}") from exc
        serialise_embedded(w3)
        self.config = config
        self.clock = clock
        self.log = logger or logging.getLogger("fwledger.tracker")
        self.deployment = deployment
        self.chain_id = int(deployment.chain_id)
        self.registry = to_checksum_address(deployment.address)
        self.code_hash = bytes.fromhex(str(deployment.code_hash).removeprefix("0x"))
        self.compiled = compiled or registry_contract()
        self.account = load_identity(config.identity_path)
        self.wave_key = wave_key_of(self.account)
        self.chain = ChainReader(w3, self.compiled, self.registry)
        self.index = Index(config.index_path)
        try:
            self.node = FullNode(w3, deployment, self.index, confirmations=confirmations, batch_blocks=batch_blocks)
            self.inventory = Inventory(config.inventory_path, log_limit=config.log_limit,
                                       trigger_limit=config.trigger_limit, wave_key=self.wave_key)
            self.concerned = ConcernedStore(self.inventory)  # C11.3.g: devices servers say a release concerns
        except BaseException:
            self.index.close()
            raise
        try:
            self.admissions = TrackerAdmissions(config, self.inventory, clock=clock, log=self.log,
                                                hardware_known=lambda hw: any(h.hw_id == hw
                                                                              for h in self.index.hardware()))
        except BaseException:
            self.inventory.close()
            self.index.close()
            raise
        self.rollout_settings = RolloutSettings(tuple(config.waves), config.halt_failure_rate,
                                                config.halt_min_failures)
        self.inventory.labels_of = self._labels_of  # rollout targets and windows select by admission labels
        self.trigger_limiter = RateLimiter(config.trigger_rate)  # per signer, bounded (LRU of signers)
        self.observations = PendingObservations(  # T9.e versions not indexed yet: synced for as blocks arrive
            config.max_observations if config.observation_retry > 0 else 0, confirmations=confirmations,
            margin=config.observation_margin, clock=clock)
        self._sync_lock = threading.Lock()
        self._command_lock = threading.Lock()
        self._assess_lock = threading.Lock()
        self._resolver: Resolver | None = None
        self._catalog_block = 0
        self._generation = 0            # bumped whenever the catalog is rebuilt
        self._assessed_generation = -1  # the generation the whole fleet was last assessed at
        self._next_cause: str | None = None
        self._attestations: OrderedDict[int, tuple[BlockHeader, Attestation]] = OrderedDict()
        self._attest_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_sync_at: float | None = None
        self.last_sync_error: str | None = None

    def _labels_of(self, device_id: str) -> dict[str, str]:
        """The device's admission labels (none in open admission mode: only ``region`` from its report)."""
        if not self.admissions.required:
            return {}
        adm = self.admissions.store.get(device_id)
        return dict(adm.labels) if adm is not None and adm.admitted else {}

    @property
    def address(self) -> str:
        """The tracker's signing address (devices are provisioned with it)."""
        return str(self.account.address)

    def _event(self, name: str, **fields: Any) -> None:
        self.log.info(json.dumps({"event": name, **fields}, default=str, sort_keys=True))

    # ================================================================ clause 11.2: the main loop

    def cycle(self) -> LedgerRound:
        """One round of the tracker's duties (X.1368 clause 11.2), in order.

        1. Follow the ledger (T9.d, periodic polling): the full node ingests new events and
           re-verifies every record; a changed ledger rebuilds the resolver's catalog.
        2. Know the consumers' status (C11.2.b): their last reports, kept by :meth:`heartbeat`.
        3. Keep the lists of up-to-date and outdated consumers (C11.2.a; R10.b.i, R10.b.ii) and
           decide, per device, whether an update is needed (C11.2.c; R10.e.i: only then).

        4. Start the updates (P2): every device needing a release is enrolled in its rollout,
           and the rollouts take their automatic decisions (:meth:`assess`); the command itself
           goes out in the answer to the device's next heartbeat (:meth:`heartbeat`).
        5. A device whose command expired unanswered falls silent in its rollouts: it no longer
           holds its wave back (an offline device never blocks a rollout) and is commanded again
           when it heartbeats.
        6. A rollout no device joined or moved in for ``rollout_settle`` seconds decides as after
           a whole-fleet assessment: nothing pending in its open waves (an empty canary wave, its
           devices all reported) opens the next ones.

        Raises:
            ChainError, ConfigError, IndexCorruption: the full node or the inventory failed
                (an unreachable node is not an error: the round reports it and the next retries).
        """
        ledger = self.follow_ledger()                                   # 1. T9.d
        if ledger.error is None and ledger.block is not None:          # T9.e observations found or given up
            self._settle_observations(ledger.block)
        if self._generation != self._assessed_generation:
            fleet = self.inventory.devices()                            # 2. C11.2.b
            fleet = self.admissions.entitled(fleet)                     # only admitted devices count
            self.assess(fleet, self._take_cause("T9.d"), whole_fleet=True)  # 3-4. C11.2.a, C11.2.c, P2
        silent = self.inventory.expire_commands(self.clock())          # 5. unanswered commands
        if silent:
            self._event("commands_expired", rollouts=silent)
        opened = self.inventory.settle_rollouts(self.clock(), self.config.rollout_settle)  # 6. quiet rollouts
        if opened:
            self._event("rollouts_settled", rollouts=opened)
        return ledger

    def follow_ledger(self) -> LedgerRound:
        """Sync the full node; rebuild the catalog when registry events arrived, when the node
        rolled its index back (the chain reorganised or was reset below the cursor: records may
        be gone), or on first run.

        Raises:
            ChainError: a reorganisation below every block the index remembers, or an unusable
                answer.
            ConfigError, IndexCorruption: as :meth:`FullNode.sync_once`.
        """
        with self._sync_lock:
            try:
                report = self.node.sync_once()
            except ChainUnreachable as exc:
                self.last_sync_error = str(exc)
                cur = self.index.cursor()
                return LedgerRound(None if cur is None else cur.block, 0, False, str(exc))
            except FwledgerError as exc:
                self.last_sync_error = str(exc)
                raise
            self.last_sync_at = self.clock()
            self.last_sync_error = None
            cursor = self.index.cursor()
            block = None if cursor is None else cursor.block
            if report.rolled_back:
                with self._attest_lock:  # headers of the lost blocks must not be attested again
                    for number in [n for n in self._attestations if n > (report.rolled_back_to or 0)]:
                        del self._attestations[number]
                self._event("ledger_rolled_back", rolled_back_from=report.rolled_back_from,
                            rolled_back_to=report.rolled_back_to, events_removed=report.events_removed,
                            releases_removed=report.releases_removed)
            changed = report.events > 0 or report.rolled_back or self._resolver is None
            if changed and cursor is not None:
                resolver = Resolver(catalog_from_index(self.index))
                with self._assess_lock:
                    self._resolver, self._catalog_block = resolver, cursor.block
                    self._generation += 1
                self._event("ledger_changed", block=block, events=report.events, releases=report.releases)
            return LedgerRound(block, report.events, changed)

    def _settle_observations(self, cursor: int) -> None:
        found, expired = self.observations.settle(self.index, cursor, self.clock())
        for obs in found:
            self._next_cause = "T9.e"  # the whole-fleet assessment this catalog change brings
            self._event("observation_settled", block=cursor, **obs.to_json())
        for obs in expired:
            self._event("observation_expired", block=cursor, **obs.to_json())

    def _take_cause(self, default: str) -> str:
        cause, self._next_cause = self._next_cause, None
        return cause or default

    def assess(self, devices: Sequence[DeviceRow], cause: str, *, whole_fleet: bool = False) -> list[Assessment]:
        """C11.2.a and C11.2.c: each device's verdict (outdated, revoked or vulnerable, unknown
        versions) and, when its plan has upgrades, "update needed" recorded with ``cause`` and
        the device enrolled in each release's rollout (P2). Rollouts open further waves only on
        a whole-fleet assessment (a lone heartbeat never skips a canary wave).

        Raises:
            IndexCorruption: a stored device no longer builds a profile; the inventory is damaged.
        """
        with self._assess_lock:
            resolver, block, generation = self._resolver, self._catalog_block, self._generation
            if resolver is None:
                return []
            out: list[Assessment] = []
            for row in devices:
                rep: OutdatedReport = resolver.outdated(row.profile())
                kinds = {f.kind for f in rep.findings}
                report = {**rep.to_json(), "findings": [_finding_json(f) for f in rep.findings]}
                out.append(Assessment(row.device_id, block, rep.outdated, bool(kinds & _AT_RISK),
                                      FindingKind.UNKNOWN in kinds, report,
                                      tuple(u.to_json() for u in rep.plan.upgrades)))
            added = self.inventory.save_assessments(out, cause, self.clock(), rollouts=self.rollout_settings,
                                                    advance=whole_fleet)
            if whole_fleet:
                self._assessed_generation = generation
        if added:
            self._event("updates_needed", cause=cause, devices=len(added))
        return out

    # ================================================================ background thread

    def start(self) -> None:
        """Run :meth:`cycle` every ``poll_interval`` seconds (or when woken) in a daemon thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fwledger-tracker")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.cycle()
            except FwledgerError as exc:
                self._event("cycle_failed", error=f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # a bug must not kill the follower silently
                self.last_sync_error = f"internal error: {type(exc).__name__}: {exc}"
                self._event("cycle_crashed", error=self.last_sync_error)
            pending = len(self.observations) > 0  # T9.e: poll faster until the observed release is confirmed
            self._wake.wait(min(self.config.poll_interval, self.config.observation_retry) if pending
                            else self.config.poll_interval)
            self._wake.clear()

    def wake(self) -> None:
        """Run a cycle now (a device reported a version the tracker did not know: T9.e)."""
        self._wake.set()

    def stop(self, timeout: float = 20.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        """Stop the thread and close the index and the inventory."""
        self.stop()
        with self._sync_lock, self._assess_lock:
            self.index.close()
            self.inventory.close()
            self.admissions.close()

    # ================================================================ C11.2.b: consumers' status

    def heartbeat(self, signer: str, hb: HeartbeatIn) -> dict[str, Any]:
        """A device registers, reports its status and its last update's result (C11.2.b i-iii).

        The report is stored and logged; the device is assessed at once. A version the ledger
        does not have is logged as a T9.e observation and the ledger polled at once; if the
        release is not confirmed yet, the observation stays pending (:mod:`.observations`).

        Raises:
            TrackerRefusal: ``device_key_mismatch`` (the id belongs to another key).
            IndexCorruption: the inventory is damaged.
        """
        now = self.clock()
        adm = self.admissions.check(signer, hb.device_id, hb=hb)
        declared: dict[str, Any] = {}
        if adm is not None:  # the admission decides the hardware class and region, never the device's word
            declared = {k: v for k, v, real in (("hardware", hb.hardware, adm.hardware),
                                                ("location", hb.location, adm.region)) if v != real}
            hb = hb.model_copy(update={"hardware": adm.hardware, "location": adm.region, "certificate": None})
        row, change = self.inventory.record_heartbeat(signer, hb, now, rebind=adm is not None, declared=declared)
        verdicts = self.assess([row], "heartbeat")
        verdict = verdicts[0] if verdicts else None
        unknown = [f for f in (verdict.report["findings"] if verdict else []) if f["kind"] == FindingKind.UNKNOWN]
        fresh = [f for f in unknown if change["new"] or f["product"] in change["versions"]]
        if fresh:  # T9.e: a device runs a version this tracker has not seen on the ledger
            seen = [{"product": f["product"], "version": f["installed"]} for f in fresh]
            kept = {o["product"]: self.observations.observe(  # kept until its release is confirmed, if worth it
                self.index, signer, row.device_id, str(row.components.get(o["product"], {}).get("vendor", "")),
                o["product"], o["version"], now) for o in seen}
            self.inventory.log(now, row.device_id, "T9.e", {"unknown_versions": seen, "pending": kept})
            self._event("update_observed", device_id=row.device_id, versions=seen, pending=kept)
            self._next_cause = "T9.e"
            self.wake()
        commands = self._commands_for(row, verdict, hb.ready, now)
        return {"device_id": row.device_id, "registered": change["new"],
                "ledger_block": verdict.block if verdict else None,
                "outdated": verdict.outdated if verdict else None,
                "update_needed": bool(verdict and verdict.upgrades),
                "unknown_versions": [f["product"] for f in unknown],
                "commands": commands}

    # ================================================================ P2-P5: commands and results

    def _commands_for(self, row: DeviceRow, verdict: Assessment | None, ready: bool, now: float
                      ) -> list[dict[str, Any]]:
        """The update command for a device that just reported (docs/MODULES.md section 3), if any:
        only when it needs an update (R10.e.i), is ready, and the rollouts of the releases it
        carries admit it (the admitted part of the plan, dependencies included); an outstanding unexpired command
        for the same upgrades is re-sent as is."""
        if verdict is None or not verdict.upgrades or not ready:
            return []
        plan = list(verdict.upgrades)
        with self._command_lock:
            outstanding = self.inventory.outstanding_command(row.device_id, now)
            if outstanding is not None and outstanding["command"]["device_address"] == row.address:
                # still running it (the device heartbeats between upgrades) or stopped mid-way: every
                # upgrade it carries is either still planned or already installed -> send it again
                # (the device resumes an unfinished command); otherwise the plan moved on
                planned = {str(u["header_hash"]) for u in plan}
                sent = outstanding["command"]["upgrades"]
                left = [str(u["header_hash"]) for u in sent if u["header_hash"] in planned]
                if all(u["header_hash"] in planned
                       or row.components.get(u["product"], {}).get("version") == u["to_version"] for u in sent):
                    # ... as long as the rollouts of what is left still admit the device (not halted)
                    if all(g is not None and g["admits"] for g in self.inventory.admission(row.device_id, left, now)):
                        return [outstanding]
                    return []
            keep, gates, _held = self._gate(row.device_id, plan, now)
            if not keep:
                return []
            plan, gates = [plan[i] for i in keep], [gates[i] for i in keep]
            upgrades = []
            for u in plan:
                release = self.index.release(str(u["header_hash"]))
                if release is None or release.flagged or release.revoked or release.vulnerable:
                    return []  # the ledger moved since the assessment; the next one re-plans
                upgrades.append({**u, "link": release.record.data.file_link})
            target = gates[-1]
            assert target is not None
            command = new_command(issuer=self.address, device_id=row.device_id, device_address=row.address,
                                  chain_id=self.chain_id, registry=self.registry, issued_at=int(now),
                                  ttl=self.config.command_ttl, block=verdict.block, upgrades=upgrades,
                                  rollout=target["rollout"], wave=target["wave"])
            envelope = sign_command(self.account, command)
            self.inventory.issue_command(row.device_id, envelope, [g["rollout"] for g in gates if g is not None],
                                         now)
        self._event("command_issued", device_id=row.device_id, command_id=command["command_id"],
                    rollout=target["rollout"], wave=target["wave"], upgrades=len(upgrades))
        return [envelope]

    def results(self, signer: str, device_id: str, body: ResultsIn | Mapping[str, Any]) -> dict[str, Any]:
        """A device reports what became of a command issued to it (P5, docs/MODULES.md section 3):
        recorded in its rollouts (which may halt or open the next wave), as its last update
        result, and in the communication log. Every refusal is logged.

        ``body`` is the request's JSON (validated here when given as a mapping) or the model.

        Raises:
            TrackerRefusal: ``invalid_request`` (a malformed body), ``forbidden`` (not signed by
                the device's key, or no such device), ``unknown_command`` (not issued to this
                device), ``already_reported``, ``result_mismatch`` (a result for a release the
                command does not carry).
        """
        if not isinstance(body, ResultsIn):
            try:
                body = ResultsIn.model_validate(dict(body))
            except (ValidationError, TypeError, ValueError) as exc:
                raise TrackerRefusal("invalid_request", f"results: {exc}"[:300]) from None
        now = self.clock()
        row = self.inventory.device(device_id)
        try:
            self.admissions.check(signer, device_id)
            if row is None or row.address != signer:
                raise TrackerRefusal("forbidden", f"{signer} may not report results for device {device_id}")
            out = self.inventory.record_results(device_id, body, now)
        except TrackerRefusal as refusal:
            self.inventory.log(now, device_id if row is not None else None, "results_refused",
                               {"device_id": device_id, "signer": signer, "command_id": body.command_id,
                                "code": refusal.code, "message": str(refusal)})
            self._event("results_refused", device_id=device_id, signer=signer, command_id=body.command_id,
                        code=refusal.code)
            raise
        self._event("results_recorded", device_id=device_id, command_id=body.command_id, **out)
        return out

    # rollouts (docs/MODULES.md section 4): the gate and the operator's actions, rollout_ops.TrackerRollouts

    # ================================================================ clause 9: triggers

    def trigger(self, signer: str, trig: TriggerIn) -> dict[str, Any]:
        """An update request from an author (T9.a), a firmware server (T9.b) or an administrator
        (T9.c): acted on only if the signer may send it and the ledger has that release with that
        version. The ledger is polled before judging, so a release published a moment ago is
        found and one revoked since the last poll is refused. Acting: the fleet is re-assessed
        and "update needed" recorded per device. Every request whose signature verified is
        logged, refused or not, except one over the signer's ``trigger_rate`` (refused first,
        nothing stored); the triggers table keeps the newest ``trigger_limit`` rows.

        Raises:
            TrackerRefusal: ``rate_limited``; as :func:`.inventory.judge_trigger`.
        """
        self.trigger_limiter.check(signer, "triggers")
        now = self.clock()
        hh = trig.header_hash.lower()
        keys = {"server_keys": self.config.server_keys, "admin_keys": self.config.admin_keys}
        try:
            check_party(trig, signer, vendors=None, **keys)  # configured parties: before any chain work
            self.follow_ledger()  # judge against the newest ledger: a release revoked a block ago is refused
            facts = _facts(self.index.release(hh))
            vendors = {v.address: v.name for v in self.index.vendors() if v.active}
            judge_trigger(trig, signer, facts, vendors=vendors, **keys)
        except TrackerRefusal as refusal:
            self.inventory.log_trigger(now, trig, signer, accepted=False, code=refusal.code, message=str(refusal))
            self._event("trigger_refused", source=trig.source, signer=signer, header_hash=hh, code=refusal.code)
            raise
        clause = CLAUSE[Source(trig.source)]
        trigger_id = self.inventory.log_trigger(now, trig, signer, accepted=True)
        rel = self.index.release(hh)
        if trig.devices and rel is not None:  # C11.3.g: the server's attention list (never an order)
            d = rel.record.data  # the ledger's release, not the server's word
            self.concerned.record(now, trigger_id, signer, {"header_hash": hh, "vendor": d.vendor_name,
                                                            "product": d.product, "version": str(d.version)},
                                  trig.devices)
        self.assess(self.inventory.devices(), f"{clause}#{trigger_id}", whole_fleet=True)
        devices = sorted({n["device_id"] for n in self.inventory.needs() if n["header_hash"] == hh})
        self.inventory.set_trigger_devices(trigger_id, len(devices))
        self._event("trigger_accepted", id=trigger_id, clause=clause, header_hash=hh, devices=len(devices),
                    concerned=len(trig.devices))
        named = {x.device_id for x in trig.devices}
        # the link may be a mirror of the record's: devices verify the image by hash either way
        return {"trigger_id": trigger_id, "accepted": True, "clause": clause, "source": trig.source,
                "header_hash": hh, "version": trig.version, "link": trig.link,
                "link_on_ledger": trig.link == facts.file_link, "devices": devices,
                "concerned": [{k: e[k] for k in ("device_id", "state")} for e in self.concerned.entries(header_hash=hh)
                              if e["server"] == signer and e["device_id"] in named]}

    # ================================================================ attestations and evidence

    def _cursor_block(self) -> tuple[int, str]:
        cursor = self.index.cursor()
        if cursor is None:
            raise TrackerRefusal("not_synced", "the tracker has not synced the ledger yet")
        return cursor.block, cursor.block_hash

    def _attested(self, number: int) -> tuple[BlockHeader, Attestation]:
        """A header the tracker has indexed up to, and its own attestation of it (cached)."""
        top, top_hash = self._cursor_block()
        if number > top:
            raise TrackerRefusal("block_not_synced", f"the tracker has indexed up to block {top}, not {number}",
                                 synced=top)
        with self._attest_lock:
            hit = self._attestations.get(number)
            if hit is not None and (number != top or "0x" + hit[0].hash.hex() == top_hash):
                self._attestations.move_to_end(number)
                return hit
        header = self.chain.header(number)
        if number == top and "0x" + header.hash.hex() != top_hash:
            raise ChainError(f"block {number} is no longer the one indexed: the chain reorganised")
        att = attest(self.account, header, chain_id=self.chain_id, registry=self.registry)
        with self._attest_lock:
            self._attestations[number] = (header, att)
            while len(self._attestations) > _ATTESTATION_CACHE:
                self._attestations.popitem(last=False)
        return header, att

    def attestation(self, number: int | None = None) -> dict[str, Any]:
        """This tracker's EIP-712 attestation of block ``number`` (default: the newest block it
        indexed, i.e. head minus confirmations) and the block's header RLP.

        Raises:
            TrackerRefusal: ``not_synced``, ``block_not_synced`` (``number`` above the index).
            ChainError: the node failed, or the indexed block was reorganised away.
        """
        header, att = self._attested(self._cursor_block()[0] if number is None else number)
        return {"header_rlp": "0x" + header.rlp.hex(), "attestation": att.to_json()}

    def attestations(self, number: int) -> dict[str, Any]:
        """Every server-module attestation of block ``number`` this module knows: its own
        (docs/MODULES.md section 6), with the header RLP.

        Raises:
            TrackerRefusal: ``not_synced``, ``block_not_synced``.
            ChainError: the node failed, or the indexed block was reorganised away.
        """
        header, att = self._attested(number)
        return {"header_rlp": "0x" + header.rlp.hex(), "attestations": [att.to_json()]}

    def evidence(self, header_hash: str, hw_id: str | None = None, number: int | None = None) -> dict[str, Any]:
        """Everything a device needs to prove a release at one block (:mod:`.evidence`), with
        this tracker's attestation and the line's newer records up to that block's head; the
        tracker checks the release's proof verifies before serving it. A device asks with its
        hardware class to have the class's policy proven too.

        Raises:
            TrackerRefusal: ``unknown_release``, ``unknown_hardware`` (not a class registered on the
                ledger: refused, so an intermediate never caches an answer per junk class),
                ``flagged_release``, ``not_synced``, ``block_not_synced``, ``release_not_at_block``
                (the block predates the release).
            ChainError: the node failed or served proofs that do not verify.
        """
        release = self.index.release(header_hash)
        if release is None:
            raise TrackerRefusal("unknown_release", f"release {header_hash} is not in the tracker's index")
        if hw_id is not None and hw_id not in {h.hw_id for h in self.index.hardware()}:
            raise TrackerRefusal("unknown_hardware", f"hardware class {hw_id!r} is not registered on the ledger")
        if release.flagged:
            raise TrackerRefusal("flagged_release", f"release {header_hash} failed the full node's checks: "
                                                    f"{release.flag_reason}")
        number = self._cursor_block()[0] if number is None else number
        if number < release.block:
            raise TrackerRefusal("release_not_at_block",
                                 f"release {header_hash} was published at block {release.block}, after {number}")
        header, att = self._attested(number)
        successors = [r.record for r in self.index.releases(product=release.product, vendor=release.vendor_name)
                      if release.position is not None and r.position is not None and r.position > release.position
                      and r.block <= number][:MAX_SUCCESSORS]
        proof = self.chain.registry_proof(release.record, number, hw_id, successors)
        try:  # never serve evidence that a device would refuse
            verify_release(header_rlp=header.rlp, block_hash=header.hash, registry_address=self.registry,
                           code_hash=self.code_hash, compiled=self.compiled, record=release.record,
                           proof=parse_proof_json(proof), hw_id=hw_id)
        except ProofError as exc:
            raise ChainError(f"the node's proofs for {header_hash} do not verify: {exc}") from exc
        return Evidence(header.rlp, (att,), proof, release.record, tuple(successors)).to_json()

    # ================================================================ queries (C11.2.a)

    def ledger_block(self) -> int | None:
        cursor = self.index.cursor()
        return None if cursor is None else cursor.block

    def device(self, device_id: str) -> DeviceRow:
        """Raises:
            TrackerRefusal: ``unknown_device``.
        """
        row = self.inventory.device(device_id)
        if row is None:
            raise TrackerRefusal("unknown_device", f"no device {device_id} in the inventory")
        return row

    def _device_json(self, row: DeviceRow, verdict: dict[str, Any] | None, needs: list[dict[str, Any]],
                     now: float, concerned: list[dict[str, Any]]) -> dict[str, Any]:
        out = row.to_json(now, self.config.stale_after)
        out["assessment"] = None if verdict is None else {
            "block": verdict["block"], "outdated": verdict["outdated"], "at_risk": verdict["at_risk"],
            "unknown": verdict["unknown"], "reasons": verdict["report"]["reasons"],
            "findings": verdict["report"].get("findings", [])}
        out["update_needed"] = [{k: n[k] for k in ("product", "from_version", "to_version", "header_hash", "cause",
                                                   "since")} for n in needs]
        out["firmware"] = firmware_status(row.components)
        out["concerned"] = concerned  # C11.3.g: releases firmware servers said concern it
        return out

    def devices(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every device with its status, readiness and verdict; ``status`` filters:
        ``outdated``, ``up-to-date``, ``at-risk``, ``unknown``, ``unreachable``, ``update-needed``,
        ``safe-mode`` (a component the device says is in safe mode, C11.1.a.iv), ``no-firmware``,
        ``unverified``, ``in-trial`` (a component in that state; never up to date), ``concerned`` (a
        firmware server said a release concerns it, C11.3.g, and it does not run that release yet)."""
        now = self.clock()
        verdicts = self.inventory.assessments()
        needs: dict[str, list[dict[str, Any]]] = {}
        for n in self.inventory.needs():
            needs.setdefault(n["device_id"], []).append(n)
        concerned = self.concerned.by_device()
        rows = [self._device_json(r, verdicts.get(r.device_id), needs.get(r.device_id, []), now,
                                  concerned.get(r.device_id, [])) for r in self.inventory.devices()]

        def keep(d: dict[str, Any]) -> bool:
            a = d["assessment"]
            firmware: dict[str | None, bool] = {k: k in d["firmware"] for k in FIRMWARE_STATUSES}
            return {None: True,
                    "outdated": bool(a and a["outdated"]),
                    "up-to-date": bool(a and not a["outdated"]),
                    "at-risk": bool(a and a["at_risk"]),
                    "unknown": bool(a and a["unknown"]),
                    "unreachable": d["readiness"] == "unreachable",
                    "update-needed": bool(d["update_needed"]),
                    "concerned": any(e["state"] != "updated" for e in d["concerned"]),
                    **firmware}[status]

        return [d for d in rows if keep(d)]

    def device_detail(self, device_id: str, log_limit: int = 50) -> dict[str, Any]:
        """One device, its verdict, updates needed and its newest communication log entries.

        Raises:
            TrackerRefusal: ``unknown_device``.
        """
        row = self.device(device_id)
        out = self._device_json(row, self.inventory.assessment(device_id), self.inventory.needs(device_id),
                                self.clock(), self.concerned.entries(device_id=device_id))
        out["log"] = self.inventory.communications(device_id, limit=log_limit)
        return out

    def plan(self, device_id: str) -> dict[str, Any]:
        """The device's plan against the ledger now: upgrades in order, blocked components and why.

        Raises:
            TrackerRefusal: ``unknown_device``, ``not_synced``.
        """
        row = self.device(device_id)
        with self._assess_lock:
            resolver, block = self._resolver, self._catalog_block
            if resolver is None:
                raise TrackerRefusal("not_synced", "the tracker has not synced the ledger yet")
            rep = resolver.outdated(row.profile())
        out = rep.to_json()
        _keep, _gates, held = self._gate(device_id, out["plan"]["upgrades"])
        if any(h["reason"] == "not_enrolled" for h in held):
            # the catalog changed since the device's last assessment: assess it now (it is
            # enrolled in the new releases' rollouts), so the plan and its rollouts agree
            self.assess([row], "heartbeat")
            _keep, _gates, held = self._gate(device_id, out["plan"]["upgrades"])
        return {**out, "findings": [_finding_json(f) for f in rep.findings], "catalog_block": block,
                "ledger_block": self.ledger_block(), "update_needed": self.inventory.needs(device_id), "held": held}

    def outdated_lists(self) -> dict[str, Any]:
        """C11.2.a: up-to-date and outdated devices by id (R10.b.i), those running a revoked,
        vulnerable or flagged release (R10.b.ii), those running versions not on the ledger, those
        not assessed yet, and those with a component in safe mode (the device says it needs an
        update, C11.1.a.iv), with no firmware, an unverified image or an image on trial (never up
        to date); each listed device with its reasons."""
        verdicts = self.inventory.assessments()
        ids = [r.device_id for r in self.inventory.devices()]
        out: dict[str, Any] = {"ledger_block": self.ledger_block(), "devices": len(ids), "up_to_date": [],
                               "outdated": [], "revoked_or_vulnerable": [], "unknown_versions": [],
                               "unassessed": [], "safe_mode": [], "no_firmware": [], "unverified": [],
                               "in_trial": [], "observations_pending": self.observations.entries(),
                               "concerned": [e for e in self.concerned.entries() if e["state"] != "updated"]}
        rows = {r.device_id: r for r in self.inventory.devices()}
        for dev in ids:
            for status in firmware_status(rows[dev].components):  # not up to date, whatever the verdict
                out[status.replace("-", "_")].append(dev)
            v = verdicts.get(dev)
            if v is None:
                out["unassessed"].append(dev)
                continue
            findings = v["report"].get("findings", [])
            if v["outdated"]:
                out["outdated"].append({"device_id": dev, "reasons": v["report"]["reasons"],
                                        "upgrades": v["report"]["plan"]["upgrades"]})
            else:
                out["up_to_date"].append(dev)
            if v["at_risk"]:
                out["revoked_or_vulnerable"].append(
                    {"device_id": dev, "findings": [f for f in findings if f["kind"] in _AT_RISK]})
            if v["unknown"]:
                out["unknown_versions"].append(
                    {"device_id": dev, "findings": [f for f in findings if f["kind"] == FindingKind.UNKNOWN]})
        return out

    def health(self) -> dict[str, Any]:
        cursor = self.index.cursor()
        return {"status": "ok" if self.last_sync_error is None else "degraded", "role": self.config.role,
                "address": self.address, "chain_id": self.chain_id, "registry": self.registry,
                "ledger_block": None if cursor is None else cursor.block,
                "ledger_hash": None if cursor is None else cursor.block_hash,
                "confirmations": self.node.confirmations, "devices": self.inventory.counts()["devices"],
                "last_sync_at": self.last_sync_at, "last_sync_error": self.last_sync_error,
                "observations_pending": len(self.observations)}


def _facts(release: IndexedRelease | None) -> LedgerFacts:
    if release is None:
        return LedgerFacts(found=False)
    d = release.record.data
    return LedgerFacts(found=True, version=str(d.version), vendor_name=d.vendor_name, file_link=d.file_link,
                       revoked=release.revoked, vulnerable=release.vulnerable, flagged=release.flagged)
