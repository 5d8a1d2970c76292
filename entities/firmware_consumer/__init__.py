"""The firmware consumer (X.1368 clause 6, C11.1): a device's components, A/B slots, trial boots, safe mode.

This package holds the device's on-disk state and install machinery; image verification
(attested headers, ledger proofs, bundle decryption) happens before it and hands it plaintext.

- :mod:`.state`  the component state and install transitions (pure)
- :mod:`.envelope` the state files' checksummed format and JSON field readers (pure)
- :mod:`.boot`   boot decisions: trial, confirm, revert, safe mode, anti-rollback (pure)
- :mod:`.store`  the device folder: layout, atomic writes, mirrored state copies, lock (I/O)
- :mod:`.device` :class:`Device`: installs begun, resumed, abandoned; boot, recover, status (orchestration)
- :mod:`.install_session` :class:`InstallSession`: one install's chunks, checkpoints, finish (I/O)
- :mod:`.device_info` ``device.json`` and :func:`init_device`, a new device folder (I/O)
- :mod:`.device_status` the status document, also read without opening the device (I/O)
- :mod:`.health` health checks deciding a trial (a callable or a command line)
- :mod:`.errors` :class:`DeviceError` and its branches, each with a stable ``code``
- :mod:`.verify`  every trust decision before an install: attested header, ledger proofs,
  signature, record, hardware, dependencies, versions (pure)
- :mod:`.updater` :class:`Updater`: X.1368 clause 7 P3-P5 (verify, install, trial boot, report)
- :mod:`.provision` device provisioning (trust anchors, keys) and evidence gathering (I/O)

The last three load the ledger and crypto stack (web3, eth-account); they are imported lazily,
so ``import entities.firmware_consumer`` stays light for the boot-time code paths.
"""

from __future__ import annotations

import importlib
from typing import Any

from .boot import BootKind, BootPlan, confirm, plan_boot, revert
from .device import (
    DEFAULT_CHECKPOINT_BYTES,
    DEFAULT_MAX_BOOT_ATTEMPTS,
    DEFAULT_SAFE_IMAGE,
    BootOutcome,
    Device,
    DeviceInfo,
    FactoryImage,
    InstallSession,
    init_device,
    load_device_info,
    read_status,
)
from .errors import (
    BadInstallRequest,
    BootError,
    DeviceBusy,
    DeviceError,
    DeviceExists,
    DeviceStorageError,
    ImageHashMismatch,
    InstallError,
    InstallNotActive,
    NotADevice,
    NotInSafeMode,
    NotInTrial,
    RollbackRefused,
    SafeModeActive,
    StateCorrupt,
    TrialInProgress,
    UnknownComponent,
    UpdateDeclined,
    UpdateRefused,
)
from .health import BootContext, CommandHealthCheck, HealthCheck
from .state import SLOTS, ComponentState, Result, Slot, SlotInfo, SlotStatus, pack_version
from .store import Layout

__all__ = [
    "DEFAULT_CHECKPOINT_BYTES",
    "DEFAULT_MAX_BOOT_ATTEMPTS",
    "DEFAULT_SAFE_IMAGE",
    "SLOTS",
    "BadInstallRequest",
    "BootContext",
    "BootError",
    "BootKind",
    "BootOutcome",
    "BootPlan",
    "CommandHealthCheck",
    "ComponentBinding",
    "ComponentFacts",
    "ComponentState",
    "Device",
    "DeviceBusy",
    "DeviceError",
    "DeviceExists",
    "DeviceFacts",
    "DeviceInfo",
    "DeviceStorageError",
    "Evidence",
    "FactoryImage",
    "HealthCheck",
    "ImageHashMismatch",
    "InstallError",
    "InstallNotActive",
    "InstallSession",
    "Layout",
    "NotADevice",
    "NotInSafeMode",
    "NotInTrial",
    "Provisioning",
    "Result",
    "RollbackRefused",
    "SafeModeActive",
    "Slot",
    "SlotInfo",
    "SlotStatus",
    "StateCorrupt",
    "TrialInProgress",
    "TrustAnchors",
    "UnknownComponent",
    "UpdateDeclined",
    "UpdatePolicy",
    "UpdateRefused",
    "UpdateReport",
    "Updater",
    "VerifiedUpdate",
    "anchors_from_deployment",
    "confirm",
    "gather_evidence",
    "init_device",
    "load_device_info",
    "load_provisioning",
    "pack_version",
    "plan_boot",
    "provision_device",
    "read_status",
    "revert",
    "verify_update",
]

#: names imported on first use (see the module docstring)
_LAZY = {
    "ComponentFacts": "verify", "DeviceFacts": "verify", "Evidence": "verify", "TrustAnchors": "verify",
    "VerifiedUpdate": "verify", "verify_update": "verify",
    "ComponentBinding": "provision", "Provisioning": "provision", "anchors_from_deployment": "provision",
    "gather_evidence": "provision", "load_provisioning": "provision", "provision_device": "provision",
    "UpdatePolicy": "updater", "UpdateReport": "updater", "Updater": "updater",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
