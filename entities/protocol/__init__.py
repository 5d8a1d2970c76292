"""The wire formats two or more entities read: one layer every entity imports, none of them owns.

- :mod:`.http_auth`: signed requests and responses (audience, nonce, body digest) between devices,
  trackers, firmware servers and operators.
- :mod:`.commands`: the tracker's signed update commands and the device's signed results.
- :mod:`.heartbeat`: what a device reports of its components (versions, states, boards).
- :mod:`.admission`: the operator's signed admission records.
- :mod:`.anchor_rotation`: signed trust-anchor statements.
- :mod:`entities.bundle`: the bundle format (read, verify, decrypt; building and signing stay with
  the author).

No entity package (``author``, ``firmware_server``, ``status_tracker``, ``firmware_consumer``)
imports another; they meet here.
"""
