"""The device's decline policy (X.1368 C11.1.a.vi: a device may choose not to install a verified
update): a veto hook (:class:`CommandVeto` runs an operator's command), a maintenance window and a
bound on deferrals (R10.b). :class:`.updater.Updater` asks :meth:`UpdatePolicy.decide` before it
installs."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ledger_node.errors import ConfigError

from .verify import VerifiedUpdate

__all__ = ["CommandVeto", "Decision", "UpdatePolicy", "Veto"]

_WINDOW_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")

@dataclass(frozen=True)
class Decision:
    """Whether to install a verified update now, and why (``code`` is None to install)."""

    install: bool
    code: str | None = None
    reason: str = ""


#: a veto hook: the reason to refuse the update, or None to let it through
Veto = Callable[[VerifiedUpdate], "str | None"]


class CommandVeto:
    """A veto hook that runs a command: exit status 0 lets the update through, any other vetoes it.

    The command gets ``FWLEDGER_COMPONENT``, ``FWLEDGER_PRODUCT``, ``FWLEDGER_VERSION`` and
    ``FWLEDGER_HEADER_HASH`` in its environment; the first line of its standard output is the reason.
    """

    def __init__(self, argv: Sequence[str], *, timeout: float = 30.0) -> None:
        if not argv or not all(isinstance(a, str) for a in argv):
            raise ConfigError("a veto command needs a non-empty argument list of strings")
        self.argv, self.timeout = list(argv), timeout

    def __call__(self, update: VerifiedUpdate) -> str | None:
        env = {**os.environ, "FWLEDGER_COMPONENT": update.component, "FWLEDGER_PRODUCT": update.record.data.product,
               "FWLEDGER_VERSION": str(update.version), "FWLEDGER_HEADER_HASH": "0x" + update.header_hash.hex()}
        try:
            done = subprocess.run(self.argv, env=env, stdin=subprocess.DEVNULL,  # noqa: S603 - operator's command
                                  capture_output=True, timeout=self.timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"veto command failed: {exc}"
        if done.returncode == 0:
            return None
        first = done.stdout.decode(errors="replace").strip().splitlines()
        return first[0][:200] if first else f"veto command exited with {done.returncode}"


@dataclass(frozen=True)
class UpdatePolicy:
    """When a device installs a verified update (X.1368 C11.1.a.vi: it may choose not to).

    - ``veto``: a hook that may refuse any update, with a reason (final: code ``vetoed``).
    - ``maintenance_window``: ``(start, end)`` minutes after midnight UTC (``end < start`` wraps
      past midnight); outside it the update is deferred (code ``outside_maintenance_window``) ...
    - ``max_deferrals``: ... at most this many times per release; after that it installs anyway,
      so a device cannot stay on an outdated version for ever by policy (R10.b).
    """

    maintenance_window: tuple[int, int] | None = None
    max_deferrals: int = 3
    veto: Veto | None = None

    def in_window(self, now: float) -> bool:
        if self.maintenance_window is None:
            return True
        start, end = self.maintenance_window
        t = datetime.fromtimestamp(now, UTC)
        minute = t.hour * 60 + t.minute
        return start <= minute < end if start <= end else minute >= start or minute < end

    def decide(self, update: VerifiedUpdate, *, now: float, deferred: int) -> Decision:
        """Install now, or decline with a code and a reason."""
        if self.veto is not None:
            try:
                reason = self.veto(update)
            except Exception as exc:  # a broken hook must not install by accident
                reason = f"veto hook failed: {exc!r}"
            if reason:
                return Decision(False, "vetoed", f"update to {update.version} vetoed: {reason}")
        if not self.in_window(now):
            if deferred < self.max_deferrals:
                return Decision(False, "outside_maintenance_window",
                                f"update to {update.version} deferred to the maintenance window "
                                f"({deferred + 1} of at most {self.max_deferrals} deferrals)")
            return Decision(True, None, f"outside the maintenance window, but deferred {deferred} times "
                                        f"(the limit): installing")
        return Decision(True)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> UpdatePolicy:
        """``{"maintenance_window": "HH:MM-HH:MM" (UTC), "max_deferrals": N, "veto_command": [argv]}``.

        Raises:
            ConfigError: malformed.
        """
        window = obj.get("maintenance_window")
        parsed: tuple[int, int] | None = None
        if window is not None:
            m = _WINDOW_RE.match(str(window))
            if not m:
                raise ConfigError(f"bad maintenance_window {window!r}: expected HH:MM-HH:MM (UTC)")
            h1, m1, h2, m2 = (int(g) for g in m.groups())
            parsed = (h1 * 60 + m1, h2 * 60 + m2)
        try:
            limit = int(obj.get("max_deferrals", 3))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad max_deferrals: {exc}") from exc
        if limit < 0:
            raise ConfigError("max_deferrals must be 0 or more")
        cmd = obj.get("veto_command")
        veto = CommandVeto([str(a) for a in cmd]) if isinstance(cmd, list) and cmd else None
        return cls(parsed, limit, veto)
