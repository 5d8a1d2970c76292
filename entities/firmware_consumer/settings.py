"""The device agent's settings (:class:`AgentConfig`): the tracker and firmware server URLs, the
location label it declares, the transport's settings and what it acts on (:data:`FOLLOW_MODES`).
The CLI (``fwledger device run``/``update``) builds one from its flags; :meth:`AgentConfig.validate`
refuses a bad one before anything is sent."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from ledger_node.errors import ConfigError

from .client import NetConfig, NetworkError, base_url, url_refusal

__all__ = ["FOLLOW_MODES", "AgentConfig"]

#: what the agent acts on: "plan" (commands when the heartbeat carries some, else the plan), "commands" (only them)
FOLLOW_MODES = ("plan", "commands")
_LOCATION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class AgentConfig:
    """Where the device's parties are: tracker URLs (the tracker keys and quorum k come from the
    device's provisioned anchors), firmware server URLs tried before the record's ``file_link``,
    the location label the device declares to servers (C11.3.h) and trackers, and what the agent
    acts on (``follow``: see :data:`FOLLOW_MODES` and :mod:`.agent`)."""

    trackers: tuple[str, ...]
    servers: tuple[str, ...] = ()
    location: str | None = None
    net: NetConfig = field(default_factory=NetConfig)
    follow: str = "plan"

    def validate(self) -> AgentConfig:
        """The same settings with URLs normalised.

        Raises:
            ConfigError: no tracker, a bad URL or a bad location label.
        """
        if not self.trackers:
            raise ConfigError("the device agent needs at least one tracker URL (--tracker)")
        try:
            trackers = tuple(dict.fromkeys(base_url(u, "tracker") for u in self.trackers))
            servers = tuple(dict.fromkeys(base_url(u, "firmware server") for u in self.servers))
        except NetworkError as exc:
            raise ConfigError(str(exc)) from exc
        for url in (*trackers, *servers):
            refusal = url_refusal(url, self.net)
            if refusal is not None:
                raise ConfigError(refusal)
        if self.location is not None and not _LOCATION_RE.match(self.location):
            raise ConfigError(f"bad location {self.location!r}: letters, digits, '.', '_', '-' (at most 64)")
        if self.follow not in FOLLOW_MODES:
            raise ConfigError(f"follow must be one of {', '.join(FOLLOW_MODES)}, not {self.follow!r}")
        return dataclasses.replace(self, trackers=trackers, servers=servers)
