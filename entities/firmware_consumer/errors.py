"""The device's errors: one branch (:class:`DeviceError`) of the project's tree, each with a stable ``code``.

The ``code`` strings are part of the device's interface: they are written into the component
state as the last result, shown by ``device status --json`` and reported to the status tracker
(X.1368 R10.c.i). Never rename one; add new ones.

    DeviceError                 device_error
      DeviceBusy                device_busy          another process holds the device lock
      NotADevice                not_a_device         folder missing, or device.json absent/damaged
      DeviceExists              device_exists        init over an initialised device
      UnknownComponent          unknown_component
      DeviceStorageError        storage_error        the disk refused a read or write
        StateCorrupt            state_corrupt        no valid copy of a state file
      InstallError              install_failed
        SafeModeActive          safe_mode            normal installs are refused in safe mode
        NotInSafeMode           not_in_safe_mode     recover is for safe mode only
        TrialInProgress         trial_in_progress    confirm or revert the running trial first
        RollbackRefused         rollback             version below the anti-rollback counter
        BadInstallRequest       bad_install_request  bad version/hash/size, chunk out of range
        InstallNotActive        no_install           the session was finished or abandoned
        ImageHashMismatch       hash_mismatch        written image does not hash as announced
      BootError                 boot_failed
        NotInTrial              not_in_trial         confirm/revert without a trial
      UpdateRefused             (per instance)       the verification pipeline refused an update:
                                                     quorum_not_met, stale_header, future_header,
                                                     bad_evidence, bad_proof, not_on_chain, revoked,
                                                     vulnerable, not_newest, policy_denied,
                                                     vendor_inactive, bad_signature, record_mismatch,
                                                     wrong_product, wrong_hardware, no_key_for_hardware,
                                                     dependency_unmet, rollback, and the payload codes
                                                     of docs/BUNDLE.md (bad_bundle, unwrap_failed,
                                                     chunk_auth_failed, truncated, trailing_bytes,
                                                     hash_mismatch, merkle_mismatch, ...)
      UpdateDeclined            (per instance)       the device chose not to install (C11.1.a.vi):
                                                     vetoed, outside_maintenance_window
        StatusUnproven          status_unproven      the release's standing could not be proven
                                                     again at a fresh header before a trial boot
                                                     or a confirm (:mod:`.status`): nothing
                                                     committed, the image kept for the next pass

Codes that are recorded as a component's last result without an exception being raised:
``health_check_failed``, ``health_check_error``, ``health_check_timeout``, ``too_many_boot_attempts``,
``image_corrupt``, ``no_bootable_slot``, ``state_corrupt`` (:mod:`.boot`), ``install_interrupted``
(an install cut by a restart and not resumable), ``superseded`` (an unfinished install replaced by
another), ``abandoned`` and ``manual_revert`` (defaults of the explicit calls).
"""

from __future__ import annotations

from ledger_node.errors import FwledgerError, VerificationError

__all__ = [
    "BadInstallRequest",
    "BootError",
    "DeviceBusy",
    "DeviceError",
    "DeviceExists",
    "DeviceStorageError",
    "ImageHashMismatch",
    "InstallError",
    "InstallNotActive",
    "NotADevice",
    "NotInSafeMode",
    "NotInTrial",
    "RollbackRefused",
    "SafeModeActive",
    "StateCorrupt",
    "StatusUnproven",
    "TrialInProgress",
    "UnknownComponent",
    "UpdateDeclined",
    "UpdateRefused",
]


class DeviceError(FwledgerError):
    """Root of the firmware consumer's errors; ``code`` is a stable machine-readable reason."""

    code = "device_error"


class DeviceBusy(DeviceError):
    """Another process has the device open for changes."""

    code = "device_busy"


class NotADevice(DeviceError):
    """The folder is not an initialised device (or its device.json is damaged)."""

    code = "not_a_device"


class DeviceExists(DeviceError):
    """``init`` was asked for a folder that already holds a device."""

    code = "device_exists"


class UnknownComponent(DeviceError):
    """The device has no component of that name."""

    code = "unknown_component"


class DeviceStorageError(DeviceError):
    """A read or write of the device folder failed (the OSError is chained)."""

    code = "storage_error"


class StateCorrupt(DeviceStorageError):
    """A state file (or both copies of it) failed its format, checksum or schema check."""

    code = "state_corrupt"


class InstallError(DeviceError):
    """An install was refused or failed; the active slot is untouched."""

    code = "install_failed"


class SafeModeActive(InstallError):
    """The component is in safe mode: only a manual ``recover`` install is accepted (C11.1.b)."""

    code = "safe_mode"


class NotInSafeMode(InstallError):
    """``recover`` was asked for a component that is not in safe mode."""

    code = "not_in_safe_mode"


class TrialInProgress(InstallError):
    """A new image is running on trial; it must be confirmed or reverted before another install."""

    code = "trial_in_progress"


class RollbackRefused(InstallError):
    """The version is below the component's anti-rollback counter."""

    code = "rollback"


class BadInstallRequest(InstallError):
    """Malformed install arguments: version, hash, size, or a chunk outside the image."""

    code = "bad_install_request"


class InstallNotActive(InstallError):
    """The install session was already finished or abandoned (or superseded by another)."""

    code = "no_install"


class ImageHashMismatch(InstallError, VerificationError):
    """The bytes written to the slot do not hash to the announced SHA-256; the install was abandoned."""

    code = "hash_mismatch"


class BootError(DeviceError):
    """A boot-state operation was not possible."""

    code = "boot_failed"


class NotInTrial(BootError):
    """``confirm``/``revert`` was asked while no image is on trial."""

    code = "not_in_trial"


class UpdateRefused(DeviceError):
    """The verification pipeline refused an update; nothing of the active slot or boot state changed.

    ``code`` is the stable reason of the first check that failed (see the module docstring and
    :mod:`entities.firmware_consumer.verify`).
    """

    code = "update_refused"

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class UpdateDeclined(DeviceError):
    """The device chose not to install a verified update (X.1368 C11.1.a.vi); ``code`` says why."""

    code = "declined"

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class StatusUnproven(UpdateDeclined):
    """The release's standing on chain could not be proven again at a header no older than the
    maximum header age before a trial boot or a confirm (no fresh evidence could be had, or it did
    not verify): nothing is committed; a staged image stays staged for the next pass."""

    code = "status_unproven"

    def __init__(self, message: str) -> None:
        super().__init__("status_unproven", message)
