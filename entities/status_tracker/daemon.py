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
The tracker's queries (C11.2.a) are its mixin :class:`~.tracker_views.TrackerViews`; its
attestations and evidence, :class:`~.tracker_proofs.TrackerProofs`.
Not in this module: intermediate and client modules (D8.2.1, D8.2.3) and mutual TLS.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address
from pydantic import ValidationError
from web3 import Web3

from entities.protocol.commands import new_command, sign_command
from entities.settings import load_or_create_key
from ledger_node.attestation import Attestation
from ledger_node.compiler import CompiledContract, registry_contract
from ledger_node.errors import ChainUnreachable, ConfigError, FwledgerError
from ledger_node.fullnode import FullNode, Index
from ledger_node.header import BlockHeader
from ledger_node.lru import LRU
from ledger_node.providers import serialise_embedded
from ledger_node.registry import Deployment

from .admissions import TrackerAdmissions
from .concerned import ConcernedStore
from .config import TrackerConfig
from .evidence import ChainReader, Evidence
from .inventory import (
    Assessment,
    DeviceRow,
    HeartbeatIn,
    Inventory,
    ResultsIn,
    TrackerRefusal,
)
from .observations import ObservationStore, PendingObservations
from .ratelimit import RateLimiter
from .resolver import FindingKind, OutdatedReport, Resolver, catalog_from_index
from .rollout import RolloutSettings
from .tracker_proofs import ATTESTATION_CACHE, EVIDENCE_CACHE, TrackerProofs
from .tracker_views import _AT_RISK, TrackerViews, _finding_json
from .triggers import TrackerTriggers

__all__ = ["LedgerRound", "Tracker", "load_identity"]


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


class Tracker(TrackerViews, TrackerProofs, TrackerTriggers):
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
        try:  # T9.e versions (and T9.b triggers) not indexed yet: synced for as blocks arrive, kept across restarts
            self.observations = PendingObservations(
                config.max_observations if config.observation_retry > 0 else 0, confirmations=confirmations,
                margin=config.observation_margin, clock=clock, store=ObservationStore(self.inventory))
        except BaseException:
            self.admissions.close()
            self.inventory.close()
            self.index.close()
            raise
        # lock order: _sync_lock, _assess_lock, _command_lock, the observations' lock, the inventory's
        # (a heartbeat takes them all, then writes in one inventory batch: Inventory.batch)
        self._sync_lock = threading.Lock()
        self._assess_lock = threading.RLock()
        self._command_lock = threading.RLock()
        self._resolver: Resolver | None = None
        self._catalog_block = 0
        self._generation = 0            # bumped whenever the catalog is rebuilt
        self._assessed_generation = -1  # the generation the whole fleet was last assessed at
        self._next_cause: str | None = None
        self._attestations: LRU[int, tuple[BlockHeader, Attestation]] = LRU(ATTESTATION_CACHE)
        self._attest_lock = threading.Lock()
        self._evidence_cache: LRU[tuple[str, str | None, int, bytes], Evidence] = LRU(EVIDENCE_CACHE)
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
                        self._attestations.discard(number)
                    self._evidence_cache.clear()
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
            self._event("observation_settled", block=cursor, **obs.to_json())
            if obs.source == "server" and obs.signer is not None and obs.trigger is not None:
                self.settled_trigger(obs.signer, obs.trigger)  # T9.b: acted on now its release is indexed
            else:
                self._next_cause = "T9.e"  # the whole-fleet assessment this catalog change brings
            self.observations.forget(obs)
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

    def heartbeat(self, signer: str, hb: HeartbeatIn, *, first: Callable[[], None] | None = None
                  ) -> dict[str, Any]:
        """A device registers, reports its status and its last update's result (C11.2.b i-iii).

        The report is stored and logged; the device is assessed at once. A version the ledger
        does not have is logged as a T9.e observation and the ledger polled at once; if the
        release is not confirmed yet, the observation stays pending (:mod:`.observations`).
        Everything it writes to the inventory (report, verdict, log, command) is one
        transaction, committed before the answer: all or nothing, one fsync.

        ``first`` runs first in that transaction (the app stores the request's nonce there: a
        replay raises before anything else happens); what it wrote is committed even when the
        heartbeat is then refused, as is the refusal's log entry (only the heartbeat's own
        writes are undone).

        Raises:
            TrackerRefusal: ``device_key_mismatch`` (the id belongs to another key); the
                admission's refusals (:meth:`.admissions.TrackerAdmissions.check`).
            IndexCorruption: the inventory is damaged.
        """
        now = self.clock()
        # the locks its steps take come first (the lock order above), then the one transaction
        with self._assess_lock, self._command_lock, self.observations.held(), self.inventory.batch():
            if first is not None:
                first()
            try:
                adm = self.admissions.check(signer, hb.device_id, hb=hb)
                declared: dict[str, Any] = {}
                if adm is not None:  # the admission decides the hardware class and region, never the device's word
                    declared = {k: v for k, v, real in (("hardware", hb.hardware, adm.hardware),
                                                        ("location", hb.location, adm.region)) if v != real}
                    hb = hb.model_copy(update={"hardware": adm.hardware, "location": adm.region, "certificate": None})
                with self.inventory.batch():  # a savepoint: a refusal undoes what the heartbeat wrote, not the rest
                    return self._heartbeat(signer, hb, now, adm is not None, declared)
            except Exception as exc:  # the nonce and a refusal's log entry are committed all the same
                refused = exc
        raise refused

    def _heartbeat(self, signer: str, hb: HeartbeatIn, now: float, rebind: bool, declared: dict[str, Any]
                   ) -> dict[str, Any]:
        row, change = self.inventory.record_heartbeat(signer, hb, now, rebind=rebind, declared=declared)
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
