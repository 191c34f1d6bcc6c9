"""Auditor API: checkpoints, entries as JSON Lines, RFC 9162 proofs, the verifier key.

Everything an auditor reads here can be checked offline against the public key: entries are the
exact leaf bytes, proofs are relative to a signed checkpoint the log stored, and the key is the
one in every export bundle.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass

from litestar import Controller, MediaType
from litestar.datastructures import State
from litestar.params import Parameter
from litestar.response import Stream
from sqlalchemy.ext.asyncio import AsyncEngine

from audit.checkpoint import CheckpointSigner, public_key_pem
from audit.merkle import ProofError
from audit.proofs import served_consistency_proof, served_inclusion_proof
from audit.store import AuditStore, StoredCheckpoint
from service.auth import require_roles
from service.errors import AuditNoCheckpoint, AuditQueryInvalid, AuditRangeTooLarge
from service.persistence.api_keys import Role
from service.routes.handlers import get
from service.routes.problems import problems

JSONL = "application/jsonl"
# One page of entries; a whole-log copy is what `fairunlock audit export` is for.
# Indices are JSON-safe integers; anything larger is a bad request, not a database overflow.
MAX_INDEX = 2**53 - 1
MAX_PAGE = 10_000
_READ_SLICE = 1_000


@dataclass(frozen=True, slots=True)
class InclusionProof:
    index: int
    tree_size: int
    leaf_hash: str  # base64
    proof: list[str]  # base64 hashes, bottom-up (RFC 9162 §2.1.3)
    root: str  # base64 root of the checkpoint at tree_size
    checkpoint: str  # that signed checkpoint note


@dataclass(frozen=True, slots=True)
class ConsistencyProof:
    first: int
    second: int
    proof: list[str]  # base64 hashes (RFC 9162 §2.1.4)
    second_root: str
    checkpoint: str  # the signed checkpoint note at size `second`


@dataclass(frozen=True, slots=True)
class PublicKey:
    pem: (
        str  # SubjectPublicKeyInfo PEM, for `openssl pkeyutl -verify` and `fairunlock audit verify`
    )
    verifier_key: str  # C2SP signed-note vkey "<name>+<key id>+<base64 key>"
    key_id: str  # hex
    origin: str


# Every auditor route: the common problems (service/routes/problems.py), said for this role.
_AUDITOR = {403: "The key's role is not auditor"}
_NOT_YET = {404: "Nothing integrated yet: no checkpoint"}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def _latest(engine: AsyncEngine) -> StoredCheckpoint:
    async with engine.connect() as conn:
        latest = await AuditStore(conn).latest_checkpoint()
    if latest is None:
        raise AuditNoCheckpoint("The audit log is empty: no checkpoint has been signed yet.")
    return latest


async def _checkpoint_at(engine: AsyncEngine, size: int | None, name: str) -> StoredCheckpoint:
    if size is None:
        return await _latest(engine)
    async with engine.connect() as conn:
        stored = await AuditStore(conn).checkpoint_at(size)
    if stored is None:
        raise AuditQueryInvalid(
            f"No checkpoint has size {size}: {name} must be the size of a checkpoint the log "
            "signed (GET /v1/audit/checkpoint gives the latest).",
            parameter=name,
        )
    return stored


class AuditController(Controller):
    path = "/v1/audit"
    tags = ["audit"]  # noqa: RUF012 - Litestar reads these class attributes
    guards = [require_roles(Role.AUDITOR)]  # noqa: RUF012

    @get(
        "/checkpoint",
        media_type=MediaType.TEXT,
        summary="Latest signed checkpoint",
        operation_id="audit_checkpoint",
        response_description="A C2SP tlog-checkpoint signed note (Ed25519)",
        responses=problems(404, described=_AUDITOR | _NOT_YET),
    )
    async def checkpoint(self, state: State) -> str:
        """The newest checkpoint: origin, tree size and root, signed. Keep it: it is what makes a
        later truncation or rewrite of the log detectable."""
        return (await _latest(state.engine)).note

    @get(
        "/entries",
        media_type=JSONL,
        summary="Entries as JSON Lines",
        operation_id="audit_entries",
        response_description=(
            "One entry per line: exactly the leaf bytes the Merkle tree commits to, then a newline"
        ),
        responses=problems(described=_AUDITOR),
    )
    async def entries(
        self,
        state: State,
        start: int = Parameter(ge=0, le=MAX_INDEX, default=0, description="first index"),
        end: int | None = Parameter(
            ge=0,
            le=MAX_INDEX,
            default=None,
            description=f"end index, exclusive (default: start + {MAX_PAGE}, capped at the size)",
        ),
    ) -> Stream:
        """Entries [start, end) of the log, streamed; at most MAX_PAGE per request."""
        engine: AsyncEngine = state.engine
        async with engine.connect() as conn:
            size = await AuditStore(conn).size()
        stop = min(size, start + MAX_PAGE) if end is None else end
        if stop - start > MAX_PAGE:
            raise AuditRangeTooLarge(
                f"At most {MAX_PAGE} entries per request; asked for {stop - start}.",
                max_page=MAX_PAGE,
            )
        if not start <= stop <= size:
            raise AuditQueryInvalid(
                f"Range [{start}, {stop}) is not inside the log of {size} entries.", size=size
            )

        async def lines() -> AsyncIterator[bytes]:
            for low in range(start, stop, _READ_SLICE):
                async with engine.connect() as conn:
                    leaves = await AuditStore(conn).leaves(low, min(stop, low + _READ_SLICE))
                yield b"".join(leaf + b"\n" for leaf in leaves)

        return Stream(lines(), media_type=JSONL)

    @get(
        "/proofs/inclusion",
        summary="Inclusion proof",
        operation_id="audit_inclusion_proof",
        responses=problems(404, described=_AUDITOR | _NOT_YET),
    )
    async def inclusion(
        self,
        state: State,
        index: int = Parameter(ge=0, le=MAX_INDEX, description="the entry's index"),
        tree_size: int | None = Parameter(
            ge=1,
            le=MAX_INDEX,
            default=None,
            description="size of a signed checkpoint (default: the latest)",
        ),
    ) -> InclusionProof:
        """RFC 9162 inclusion proof of one entry in the tree of a signed checkpoint."""
        engine: AsyncEngine = state.engine
        stored = await _checkpoint_at(engine, tree_size, "tree_size")
        if index >= stored.size:
            raise AuditQueryInvalid(
                f"Index {index} is not in the tree of size {stored.size}.", parameter="index"
            )
        try:
            leaf, proof = await served_inclusion_proof(engine, index, stored)
        except ProofError as exc:
            raise AuditQueryInvalid(str(exc)) from exc
        return InclusionProof(
            index=index,
            tree_size=stored.size,
            leaf_hash=_b64(leaf),
            proof=[_b64(h) for h in proof],
            root=_b64(stored.root),
            checkpoint=stored.note,
        )

    @get(
        "/proofs/consistency",
        summary="Consistency proof",
        operation_id="audit_consistency_proof",
        responses=problems(404, described=_AUDITOR | _NOT_YET),
    )
    async def consistency(
        self,
        state: State,
        first: int = Parameter(
            ge=1, le=MAX_INDEX, description="the size of the checkpoint you hold"
        ),
        second: int | None = Parameter(
            ge=1,
            le=MAX_INDEX,
            default=None,
            description="size of a later signed checkpoint (default: latest)",
        ),
    ) -> ConsistencyProof:
        """RFC 9162 proof that the tree of size `first` is a prefix of the tree of size `second`."""
        engine: AsyncEngine = state.engine
        stored = await _checkpoint_at(engine, second, "second")
        if first > stored.size:
            raise AuditQueryInvalid(
                f"first ({first}) is larger than second ({stored.size}).", parameter="first"
            )
        try:
            proof = await served_consistency_proof(engine, first, stored)
        except ProofError as exc:
            raise AuditQueryInvalid(str(exc)) from exc
        return ConsistencyProof(
            first=first,
            second=stored.size,
            proof=[_b64(h) for h in proof],
            second_root=_b64(stored.root),
            checkpoint=stored.note,
        )

    @get(
        "/public-key",
        summary="Checkpoint verifier key",
        operation_id="audit_public_key",
        responses=problems(described=_AUDITOR),
    )
    async def public_key(self, state: State) -> PublicKey:
        """The log's Ed25519 public key. Pin it out of band: a key fetched from the service
        proves nothing against the service itself."""
        signer: CheckpointSigner = state.audit_signer
        return PublicKey(
            pem=public_key_pem(signer.public_key),
            verifier_key=signer.verifier_key(),
            key_id=signer.key_id.hex(),
            origin=signer.name,
        )
