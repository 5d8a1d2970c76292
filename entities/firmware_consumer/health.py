"""Health checks that decide a trial boot: a Python callable, or a command line.

A health check gets a :class:`BootContext` and answers True (healthy: the trial is confirmed) or
False (the trial is reverted). An exception counts as unhealthy (``health_check_error``; a
:class:`TimeoutError` as ``health_check_timeout``).

A device without a health check (no ``--health-cmd``) ends a trial by this rule: the image on
trial is confirmed once the device agent (``fwledger device run`` / ``device update --tracker``),
running it, completes a verified round trip with a tracker, a heartbeat whose answer is signed by
a provisioned module ("booted and reached its tracker", :meth:`.agent.Agent.confirm_trials`); each
start of the agent counts as one more trial boot (:meth:`.agent.Agent.boot_trials`), so after
``max_boot_attempts`` boots without reaching a tracker the trial is reverted
(``too_many_boot_attempts``, R10.c.ii). Outside the agent, ``fwledger device confirm`` /
``device revert`` (:meth:`.device.Device.confirm`, :meth:`~.device.Device.revert`) end it by hand.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BootContext", "CommandHealthCheck", "HealthCheck"]


@dataclass(frozen=True)
class BootContext:
    """What a health check is told about the image on trial."""

    device_id: str
    component: str
    slot: str
    image: Path
    version: str
    attempt: int
    max_attempts: int


#: a health check: True = healthy
HealthCheck = Callable[[BootContext], bool]


class CommandHealthCheck:
    """Run a command; exit status 0 within ``timeout`` seconds means healthy.

    The command gets the context in its environment: ``FWLEDGER_DEVICE``, ``FWLEDGER_COMPONENT``,
    ``FWLEDGER_SLOT``, ``FWLEDGER_IMAGE`` (path of the slot file), ``FWLEDGER_VERSION``,
    ``FWLEDGER_ATTEMPT`` and ``FWLEDGER_MAX_ATTEMPTS``. Its standard output is discarded (``--json``
    output stays clean); its standard error is inherited.
    """

    def __init__(self, argv: Sequence[str], *, timeout: float = 30.0) -> None:
        if not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError("a health command needs a non-empty argument list of strings")
        self.argv = list(argv)
        self.timeout = timeout

    def __call__(self, ctx: BootContext) -> bool:
        """Run the command.

        Raises:
            TimeoutError: it ran longer than ``timeout`` (it is killed).
            OSError: it could not be started.
        """
        env = {
            **os.environ,
            "FWLEDGER_DEVICE": ctx.device_id,
            "FWLEDGER_COMPONENT": ctx.component,
            "FWLEDGER_SLOT": ctx.slot,
            "FWLEDGER_IMAGE": str(ctx.image),
            "FWLEDGER_VERSION": ctx.version,
            "FWLEDGER_ATTEMPT": str(ctx.attempt),
            "FWLEDGER_MAX_ATTEMPTS": str(ctx.max_attempts),
        }
        try:
            done = subprocess.run(self.argv, env=env, stdin=subprocess.DEVNULL,  # noqa: S603 - operator's command
                                  stdout=subprocess.DEVNULL, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(f"health command timed out after {self.timeout} s") from exc
        return done.returncode == 0

    def __repr__(self) -> str:
        return f"CommandHealthCheck({self.argv!r}, timeout={self.timeout})"
