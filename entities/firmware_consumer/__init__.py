"""The firmware consumer (X.1368 clause 6, C11.1): a device's components, A/B slots, trial boots, safe mode.

This package holds the device's on-disk state and install machinery; image verification
(attested headers, ledger proofs, bundle decryption) happens before it and hands it plaintext.

- :mod:`.state`  the component state, its checksummed file format, install transitions (pure)
- :mod:`.boot`   boot decisions: trial, confirm, revert, safe mode, anti-rollback (pure)
- :mod:`.store`  the device folder: layout, atomic writes, mirrored state copies, lock (I/O)
- :mod:`.device` :class:`Device`: install sessions, boot, recover, status (orchestration)
- :mod:`.health` health checks deciding a trial (a callable or a command line)
- :mod:`.errors` :class:`DeviceError` and its branches, each with a stable ``code``
"""

from __future__ import annotations

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
    "ComponentState",
    "Device",
    "DeviceBusy",
    "DeviceError",
    "DeviceExists",
    "DeviceInfo",
    "DeviceStorageError",
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
    "Result",
    "RollbackRefused",
    "SafeModeActive",
    "Slot",
    "SlotInfo",
    "SlotStatus",
    "StateCorrupt",
    "TrialInProgress",
    "UnknownComponent",
    "confirm",
    "init_device",
    "load_device_info",
    "pack_version",
    "plan_boot",
    "read_status",
    "revert",
]
