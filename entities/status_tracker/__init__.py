"""The status tracker (X.1368 clause 11.2, Appendix II full node): knows the fleet, plans updates.

Modules:

- ``resolver``: the dependency resolver of Appendix II, pure: which release each component of a
  device should run (hardware revisions, add-on boards, policies, dependencies across
  components), why not a newer one, and whether the device is outdated (R10.b.i, R10.d.i).
  :func:`~entities.status_tracker.resolver.plan_fleet` plans a whole fleet in one pass.
  Its parts: ``resolver_types`` (inputs, outputs), ``resolver_catalog`` (rules 1-4 per hardware
  class and line), ``resolver_search`` (the search); ``resolver`` re-exports their public names.
"""

from __future__ import annotations

__all__: list[str] = []
