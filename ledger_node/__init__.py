"""ledger_node: everything about the chain (providers, registry, full node, light node)."""

__version__ = "0.1.0"
