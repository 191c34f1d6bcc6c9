"""Tamper-evident audit log: RFC 6962 Merkle tree, C2SP checkpoints, export bundles, verifier.

Deliberately empty of imports: `python -m audit.verify` must load only the standard library,
`cryptography`, audit.merkle and audit.checkpoint, so an auditor needs nothing else installed.
"""
