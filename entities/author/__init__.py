"""The author (vendor) entity: vendor keys, signed and encrypted bundles, upload and publish (X.1368 P1).

- :mod:`.bundle`: the bundle format v1 (``docs/BUNDLE.md``), pure over bytes and streams;
- :mod:`.keys`: the vendor key in an encrypted keystore;
- :mod:`.ledger`: what a build reads from the ledger (class keys, line head, vendor name);
- :mod:`.publish`: upload to firmware servers, then publish the record on the ledger.
"""

from __future__ import annotations

__all__: list[str] = []
