"""The on-disk protocol between train.py and eval.py: every path, atomic files and locks, the
ledger, claims and outcomes (docs/protocol.md is the contract)."""
