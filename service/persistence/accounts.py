"""Queries about an account's enrolments and consents. Flows own the transaction; this only reads
and writes rows inside the connection it is given."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import msgspec
from sqlalchemy import (
    ColumnElement,
    ScalarSelect,
    Select,
    String,
    Text,
    bindparam,
    cast,
    delete,
    func,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.selectable import NamedFromClause

from audit.hot_sql import HotStatement
from policy.model import TotpState
from service.data_keys import KEY_COLUMNS, KeyRow, account_data_keys
from service.ids import new_id
from service.persistence.locks import (
    ADVISORY_XACT_LOCK,
    advisory_lock_key,
    advisory_xact_locks_shared,
)
from service.persistence.tables import (
    accounts,
    face_consents,
    linked_identities,
    phones,
    recovery_codes,
    totp_enrolments,
)


class PhoneRecord(msgspec.Struct, frozen=True):
    ciphertext: str
    masked: str
    verified: bool


class TotpRecord(msgspec.Struct, frozen=True):
    secret_ciphertext: str
    confirmed: bool
    last_step: int | None


class LinkedRecord(msgspec.Struct, frozen=True):
    provider: str
    issuer: str
    real_name_verified: bool
    oidc_subject_ciphertext: str


class ConsentRecord(msgspec.Struct, frozen=True):
    notice_version: str
    granted_at: datetime
    withdrawn_at: datetime | None


class AccountSnapshot(msgspec.Struct, frozen=True):
    """Everything the policy needs to know about one account, read in one transaction."""

    subject: str
    exists: bool
    erased: bool
    phone: PhoneRecord | None
    totp: TotpRecord | None
    linked: tuple[LinkedRecord, ...]
    recovery_codes_remaining: int | None
    consent: ConsentRecord | None

    @property
    def totp_state(self) -> TotpState:
        if self.totp is None:
            return TotpState.NONE
        return TotpState.CONFIRMED if self.totp.confirmed else TotpState.UNCONFIRMED


ANCHOR = select(bindparam("subject", type_=String).label("subject")).subquery("anchor")


def _latest_consent(anchor: NamedFromClause, column: ColumnElement[Any]) -> ScalarSelect[Any]:
    return (
        select(column)
        .where(face_consents.c.subject == anchor.c.subject)
        .order_by(face_consents.c.granted_at.desc(), face_consents.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )


def snapshot_facts(anchor: NamedFromClause) -> Select[Any]:
    """The one-to-one facts of each account named by the anchor's ``subject`` rows, one row each
    whether or not it exists (the anchor outer-joins everything). Others add columns to it."""
    codes_total = (
        select(func.count(recovery_codes.c.id))
        .where(recovery_codes.c.subject == anchor.c.subject)
        .scalar_subquery()
    )
    codes_unused = (
        select(func.count(recovery_codes.c.id))
        .where(recovery_codes.c.subject == anchor.c.subject, recovery_codes.c.used_at.is_(None))
        .scalar_subquery()
    )
    return select(
        accounts.c.subject.label("account_subject"),
        accounts.c.erased_at,
        phones.c.phone_ciphertext,
        phones.c.masked,
        phones.c.verified,
        totp_enrolments.c.secret_ciphertext,
        totp_enrolments.c.confirmed_at,
        totp_enrolments.c.last_step,
        codes_total.label("codes_total"),
        codes_unused.label("codes_unused"),
        _latest_consent(anchor, face_consents.c.notice_version).label("consent_version"),
        _latest_consent(anchor, face_consents.c.granted_at).label("consent_granted_at"),
        _latest_consent(anchor, face_consents.c.withdrawn_at).label("consent_withdrawn_at"),
    ).select_from(
        anchor.outerjoin(accounts, accounts.c.subject == anchor.c.subject)
        .outerjoin(phones, phones.c.subject == anchor.c.subject)
        .outerjoin(totp_enrolments, totp_enrolments.c.subject == anchor.c.subject)
    )


# Built once (constructing them costs more Python time than SQLite needs to answer them).
SNAPSHOT_FACTS = snapshot_facts(ANCHOR)
LINKED = (
    select(
        linked_identities.c.provider,
        linked_identities.c.issuer,
        linked_identities.c.real_name_verified,
        linked_identities.c.oidc_subject_ciphertext,
    )
    .where(linked_identities.c.subject == bindparam("subject"))
    .order_by(linked_identities.c.provider)
)
# What a TOTP proof reads: the enrolment alone, not the whole snapshot, with the data key that
# opens its secret.
_TOTP_WITH_KEY = select(
    totp_enrolments.c.secret_ciphertext,
    totp_enrolments.c.confirmed_at,
    totp_enrolments.c.last_step,
    *KEY_COLUMNS,
).select_from(
    totp_enrolments.outerjoin(
        account_data_keys, account_data_keys.c.subject == totp_enrolments.c.subject
    )
)


_SNAPSHOT_FACTS = HotStatement("accounts.snapshot_facts", SNAPSHOT_FACTS)
_LINKED = HotStatement("accounts.linked", LINKED)


@functools.lru_cache(maxsize=128)
def linked_many(count: int) -> HotStatement:
    """The linked identities of ``count`` accounts at once (group commit of decisions), named
    s0..s{count-1} like decision_inputs_statement's. Built once per count: an expanding IN
    re-renders its SQL on every execution (~25 % of this read's time for 32 accounts)."""
    subjects = [bindparam(f"s{i}", type_=String) for i in range(count)]
    return HotStatement(
        f"accounts.linked_many[{count}]",
        select(linked_identities.c.subject, *LINKED.selected_columns)
        .where(linked_identities.c.subject.in_(subjects))
        .order_by(linked_identities.c.subject, linked_identities.c.provider),
    )


def linked_json(anchor: NamedFromClause) -> ScalarSelect[Any]:
    """PostgreSQL: the LINKED rows of the anchor's account as one JSON array of objects (NULL
    for none), a column of the decision inputs' row instead of a second statement and round
    trip (linked_many's); ``linked_from_json`` reads it."""
    # Each field's name (a column name: no quoting needed) beside its value.
    fields = [x for c in LINKED.selected_columns for x in (literal_column(f"'{c.name}'"), c)]
    rows = func.json_agg(
        aggregate_order_by(func.json_build_object(*fields), linked_identities.c.provider)
    )
    return (
        # As text: the driver would decode json itself, and msgspec decodes it faster.
        select(cast(rows, Text))
        .where(linked_identities.c.subject == anchor.c.subject)
        .scalar_subquery()
    )


_LINKED_JSON: Final = msgspec.json.Decoder(list[LinkedRecord])


def linked_from_json(text: str | None) -> list[LinkedRecord]:
    return [] if text is None else _LINKED_JSON.decode(text)


@functools.lru_cache(maxsize=128)
def totp_many(count: int) -> HotStatement:
    """The TOTP read for ``count`` accounts at once, with each row's subject (parameters
    s0..s{count-1}, as linked_many's): a batch of proofs reads its enrolments in one statement."""
    subjects = [bindparam(f"s{i}", type_=String) for i in range(count)]
    return HotStatement(
        f"accounts.totp_many[{count}]",
        _TOTP_WITH_KEY.add_columns(totp_enrolments.c.subject.label("enrolment_subject")).where(
            totp_enrolments.c.subject.in_(subjects)
        ),
    )


def snapshot_from(subject: str, row: Any, linked: Sequence[Any]) -> AccountSnapshot:
    """An AccountSnapshot from a row with SNAPSHOT_FACTS' columns and the LINKED rows."""
    exists = row.account_subject is not None
    return AccountSnapshot(
        subject=subject,
        exists=exists,
        erased=exists and row.erased_at is not None,
        phone=PhoneRecord(row.phone_ciphertext, row.masked, row.verified)
        if row.phone_ciphertext is not None
        else None,
        totp=TotpRecord(row.secret_ciphertext, row.confirmed_at is not None, row.last_step)
        if row.secret_ciphertext is not None
        else None,
        linked=tuple(
            LinkedRecord(r.provider, r.issuer, r.real_name_verified, r.oidc_subject_ciphertext)
            for r in linked
        ),
        recovery_codes_remaining=None if not row.codes_total else int(row.codes_unused),
        # The scalar subqueries keep the column type (UtcDateTime): aware UTC already.
        consent=ConsentRecord(row.consent_version, row.consent_granted_at, row.consent_withdrawn_at)
        if row.consent_version is not None
        else None,
    )


# Erasure against the transactions that write an account's personal data (decisions, enrolment),
# on PostgreSQL: each writer holds its accounts' lock shared until it commits, the erasure holds
# it exclusively. Otherwise, under READ COMMITTED, a decision that read the account before an
# erasure committed would insert a row with the account id after the erasure cleared the rows it
# could see. SQLite needs none: BEGIN IMMEDIATE serialises every writer.
ACCOUNT_LOCK_SCOPE = "account"


TotpFound = tuple[TotpRecord, KeyRow | None]


def _totp_found(row: Any) -> TotpFound:
    key_row: KeyRow | None = (
        None
        if row.key_version is None
        else (int(row.key_version), row.wrapped_key, row.destroyed_at)
    )
    return TotpRecord(row.secret_ciphertext, row.confirmed_at is not None, row.last_step), key_row


class AccountRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def hold_for_writing(self, subjects: Sequence[str]) -> None:
        """Keep these accounts' erasure out until this transaction ends (see ACCOUNT_LOCK_SCOPE);
        an erasure that committed before is seen by every read after this."""
        if self._conn.dialect.name != "postgresql" or not subjects:
            return
        keys = sorted({advisory_lock_key(ACCOUNT_LOCK_SCOPE, subject) for subject in subjects})
        params = {f"k{i}": key for i, key in enumerate(keys)}
        await advisory_xact_locks_shared(len(keys)).run(self._conn, params)

    async def hold_for_erasure(self, subject: str) -> None:
        """Wait for the account's writers in flight to commit and keep new ones out until this
        transaction ends."""
        if self._conn.dialect.name == "postgresql":
            key = advisory_lock_key(ACCOUNT_LOCK_SCOPE, subject)
            await ADVISORY_XACT_LOCK.run(self._conn, {"p_key": key})

    async def ensure(self, subject: str, now: datetime) -> bool:
        """Create the account row if missing; False if the account was erased."""
        row = (
            await self._conn.execute(
                select(accounts.c.erased_at).where(accounts.c.subject == subject)
            )
        ).first()
        if row is None:
            await self._conn.execute(insert(accounts).values(subject=subject, created_at=now))
            return True
        return row.erased_at is None

    async def snapshot(self, subject: str) -> AccountSnapshot:
        # The same statements run whether or not the account exists, so the two cost the same
        # (OWASP-FP-1/2: no enumeration by timing).
        params = {"subject": subject}
        row = (await _SNAPSHOT_FACTS.run(self._conn, params)).one()
        linked = (await _LINKED.run(self._conn, params)).all()
        return snapshot_from(subject, row, linked)

    async def totp_many(
        self, subjects: Sequence[str], *, outside: sqlite3.Connection | None = None
    ) -> dict[str, TotpFound]:
        """The TOTP enrolments of these accounts with their data key rows (for
        DataKeys.decrypt_with), in one statement: those enrolled, by subject. ``outside``: read
        there, not in the transaction (HotStatement.run)."""
        params = {f"s{i}": s for i, s in enumerate(subjects)}
        rows = await totp_many(len(subjects)).run(self._conn, params, outside=outside)
        return {row.enrolment_subject: _totp_found(row) for row in rows}

    async def set_phone(
        self,
        subject: str,
        ciphertext: str,
        blind_index: str,
        masked: str,
        verified: bool,
        now: datetime,
    ) -> None:
        values = {
            "phone_ciphertext": ciphertext,
            "phone_blind_index": blind_index,
            "masked": masked,
            "verified": verified,
            "updated_at": now,
        }
        changed = await self._conn.execute(
            update(phones).where(phones.c.subject == subject).values(**values)
        )
        if changed.rowcount == 0:
            await self._conn.execute(insert(phones).values(subject=subject, **values))

    async def start_totp(self, subject: str, secret_ciphertext: str, now: datetime) -> None:
        await self._conn.execute(
            delete(totp_enrolments).where(totp_enrolments.c.subject == subject)
        )
        await self._conn.execute(
            insert(totp_enrolments).values(
                subject=subject, secret_ciphertext=secret_ciphertext, created_at=now
            )
        )

    async def confirm_totp(self, subject: str, step: int, now: datetime) -> bool:
        result = await self._conn.execute(
            update(totp_enrolments)
            .where(totp_enrolments.c.subject == subject, totp_enrolments.c.confirmed_at.is_(None))
            .values(confirmed_at=now, last_step=step)
        )
        return result.rowcount == 1

    async def bind_identity(
        self,
        subject: str,
        provider: str,
        issuer: str,
        oidc_subject_ciphertext: str,
        oidc_subject_blind_index: str,
        real_name_verified: bool,
        now: datetime,
    ) -> None:
        await self._conn.execute(
            delete(linked_identities).where(
                linked_identities.c.subject == subject, linked_identities.c.provider == provider
            )
        )
        await self._conn.execute(
            insert(linked_identities).values(
                subject=subject,
                provider=provider,
                issuer=issuer,
                oidc_subject_ciphertext=oidc_subject_ciphertext,
                oidc_subject_blind_index=oidc_subject_blind_index,
                real_name_verified=real_name_verified,
                bound_at=now,
            )
        )

    async def replace_recovery_codes(
        self, subject: str, hashes: Sequence[str], now: datetime
    ) -> str:
        """A new batch replaces every earlier code, used or not; returns the batch id."""
        batch = new_id()
        await self._conn.execute(delete(recovery_codes).where(recovery_codes.c.subject == subject))
        await self._conn.execute(
            insert(recovery_codes),
            [
                {
                    "id": new_id(),
                    "subject": subject,
                    "batch_id": batch,
                    "code_hash": h,
                    "created_at": now,
                }
                for h in hashes
            ],
        )
        return batch

    async def grant_consent(
        self, subject: str, notice_version: str, purpose: str, channel: str, now: datetime
    ) -> str:
        consent_id = new_id()
        await self._conn.execute(
            insert(face_consents).values(
                id=consent_id,
                subject=subject,
                notice_version=notice_version,
                purpose=purpose,
                channel=channel,
                granted_at=now,
            )
        )
        return consent_id

    async def withdraw_consent(self, subject: str, now: datetime) -> int:
        result = await self._conn.execute(
            update(face_consents)
            .where(face_consents.c.subject == subject, face_consents.c.withdrawn_at.is_(None))
            .values(withdrawn_at=now)
        )
        return result.rowcount

    async def erase(self, subject: str, now: datetime) -> None:
        """Remove enrolments (their ciphertexts are unreadable once the key is destroyed)."""
        for table in (phones, totp_enrolments, linked_identities, recovery_codes):
            await self._conn.execute(delete(table).where(table.c.subject == subject))
        await self._conn.execute(
            update(accounts).where(accounts.c.subject == subject).values(erased_at=now)
        )
