"""The service's tables. Accounts are keyed by the keyed pseudonym of the platform's account id
(``subject``), never the id in clear; personal data is stored only as ciphertext under the
account's data key (service/data_keys.py), one-time secrets only as hashes."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    literal_column,
    or_,
)

from service.persistence import UtcDateTime, metadata

SUBJECT = String(64)  # hex HMAC-SHA256 pseudonym

accounts = Table(
    "accounts",
    metadata,
    Column("subject", SUBJECT, primary_key=True),
    Column("created_at", UtcDateTime(), nullable=False),
    # Set by erasure: the data key is destroyed and enrolments are removed; history stays.
    Column("erased_at", UtcDateTime(), nullable=True),
)

phones = Table(
    "phones",
    metadata,
    Column("subject", SUBJECT, ForeignKey("accounts.subject"), primary_key=True),
    Column("phone_ciphertext", Text, nullable=False),
    # Keyed digest of the E.164 number: per-destination SMS limits without the number in clear.
    Column("phone_blind_index", String(64), nullable=False, index=True),
    Column("masked", String(32), nullable=False),
    Column("verified", Boolean, nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
)

totp_enrolments = Table(
    "totp_enrolments",
    metadata,
    Column("subject", SUBJECT, ForeignKey("accounts.subject"), primary_key=True),
    Column("secret_ciphertext", Text, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("confirmed_at", UtcDateTime(), nullable=True),
    # The last accepted time step: a code for this step or an earlier one is a replay.
    Column("last_step", BigInteger, nullable=True),
)

linked_identities = Table(
    "linked_identities",
    metadata,
    Column("subject", SUBJECT, ForeignKey("accounts.subject"), primary_key=True),
    Column("provider", String(64), primary_key=True),
    Column("issuer", String(512), nullable=False),
    Column("oidc_subject_ciphertext", Text, nullable=False),
    Column("oidc_subject_blind_index", String(64), nullable=False),
    Column("real_name_verified", Boolean, nullable=False),
    Column("bound_at", UtcDateTime(), nullable=False),
)

recovery_codes = Table(
    "recovery_codes",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("subject", SUBJECT, ForeignKey("accounts.subject"), nullable=False, index=True),
    Column("batch_id", String(36), nullable=False),
    Column("code_hash", String(200), nullable=False),  # argon2id encoded hash
    Column("created_at", UtcDateTime(), nullable=False),
    Column("used_at", UtcDateTime(), nullable=True),
)

face_consents = Table(
    "face_consents",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("subject", SUBJECT, ForeignKey("accounts.subject"), nullable=False),
    Column("notice_version", String(64), nullable=False),
    Column("purpose", String(64), nullable=False),
    Column("channel", String(64), nullable=False),
    Column("granted_at", UtcDateTime(), nullable=False),
    Column("withdrawn_at", UtcDateTime(), nullable=True),
    Index("ix_face_consents_subject_granted", "subject", "granted_at"),
)

unlock_requests = Table(
    "unlock_requests",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("subject", SUBJECT, nullable=False),
    # The platform's account id, sealed (service/sealer.py); removed by erasure.
    Column("account_id_sealed", Text, nullable=True),
    # False for an account we do not know: answered like any other, never able to succeed.
    Column("known_account", Boolean, nullable=False),
    Column("status", String(32), nullable=False),
    Column("lock_reason", String(32), nullable=False),
    Column("locale", String(8), nullable=False),
    Column("risk_level", String(16), nullable=False),
    Column("risk_score", Integer, nullable=False),
    Column("policy_version", String(64), nullable=False),
    Column("policy_sha256", String(64), nullable=False),
    # The decision as decided: signals, reasons with weights, offer (JSON). UTF-8 bytes, as msgspec
    # writes and reads them: as text, each decision was decoded to str and encoded back by the
    # driver (~3 % of a decision's instructions, measured; migration 0003).
    Column("decision_json", LargeBinary, nullable=False),
    # The request context (IP, device, geo) encrypted under the account's data key.
    Column("context_ciphertext", Text, nullable=True),
    # The decision's audit entry; its log index is looked up through it (audit_log.inbox_id).
    Column("audit_inbox_id", BigInteger, nullable=False),
    # Methods proven so far (JSON list), and why a person must look although methods remain.
    Column("factors_satisfied", Text, nullable=False, server_default="[]"),
    Column("review_reason", String(64), nullable=True),
    # Keyed digest of the request's source address: per-source throttling without the address.
    Column("source_index", String(64), nullable=True),
    Column("updated_at", UtcDateTime(), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Index("ix_unlock_requests_subject_created", "subject", "created_at"),
)

verification_attempts = Table(
    "verification_attempts",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("subject", SUBJECT, nullable=False),
    Column("unlock_request_id", String(36), nullable=True),
    Column("method", String(32), nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("source_index", String(64), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
)
# What the throttles and the risk engine's signals count: the attempts that did not succeed. Only
# those are indexed (migration 0007): a successful attempt, the one every accepted proof writes,
# then costs its table row and primary key, both appended, not two index entries at leaves as
# random as its account and source. The literal is in the SQL, never a bound parameter, so that
# both planners can see a query's filter imply the indexes' (PostgreSQL's generic plan of a
# prepared `outcome <> $1` cannot).
ATTEMPT_FAILED = verification_attempts.c.outcome != literal_column("'success'")
for _name, _column in (
    ("ix_verification_attempts_subject_failed", verification_attempts.c.subject),
    ("ix_verification_attempts_source_failed", verification_attempts.c.source_index),
):
    Index(
        _name,
        _column,
        verification_attempts.c.created_at,
        sqlite_where=ATTEMPT_FAILED,
        postgresql_where=ATTEMPT_FAILED,
    )

challenges = Table(
    "challenges",
    metadata,
    Column("id", String(36), primary_key=True),
    Column(
        "unlock_request_id",
        String(36),
        ForeignKey("unlock_requests.id"),
        nullable=False,
        index=True,
    ),
    Column("subject", SUBJECT, nullable=False),
    Column("method", String(32), nullable=False),
    Column("provider", String(64), nullable=True),
    # open -> succeeded | failed (attempts used up) | expired; changed only by conditional updates.
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    # SMS: keyed hash of the code. OIDC and face: sealed state, nonce and verifier.
    Column("secret_hash", String(64), nullable=True),
    Column("secret_sealed", Text, nullable=True),
    Column("delivery_id", String(36), nullable=True),
    Column("sends", Integer, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Column("completed_at", UtcDateTime(), nullable=True),
)
# The challenges whose secret the retention job has not wiped yet (migration 0005).
CHALLENGE_SECRET_HELD = or_(
    challenges.c.secret_hash.is_not(None), challenges.c.secret_sealed.is_not(None)
)
Index(
    "ix_challenges_secret_held",
    challenges.c.id,
    sqlite_where=CHALLENGE_SECRET_HELD,
    postgresql_where=CHALLENGE_SECRET_HELD,
)

sms_sends = Table(
    "sms_sends",
    metadata,
    Column("id", String(36), primary_key=True),
    # Keyed digest of the destination number: limits per destination without storing it.
    Column("destination_index", String(64), nullable=False),
    Column("delivery_id", String(36), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Index("ix_sms_sends_destination_created", "destination_index", "created_at"),
)

outbox_events = Table(
    "outbox_events",
    metadata,
    Column("id", String(36), primary_key=True),
    # account_unlocked (webhook to the account system) | notify_person (every channel on file)
    Column("kind", String(32), nullable=False),
    Column("subject", SUBJECT, nullable=False),
    # The event body; personal data (a phone number) only sealed, never in clear.
    Column("payload", Text, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UtcDateTime(), nullable=False),
    Column("delivered_at", UtcDateTime(), nullable=True),
    Column("last_error", String(200), nullable=True),
    Index("ix_outbox_events_pending", "delivered_at", "next_attempt_at"),
    # Erasure removes an account's events, delivered or not (they carry its sealed account id).
    Index("ix_outbox_events_subject", "subject"),
)

__all__ = [
    "accounts",
    "challenges",
    "face_consents",
    "linked_identities",
    "outbox_events",
    "phones",
    "recovery_codes",
    "sms_sends",
    "totp_enrolments",
    "unlock_requests",
    "verification_attempts",
]
