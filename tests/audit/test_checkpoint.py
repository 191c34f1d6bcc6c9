"""C2SP signed notes and tlog-checkpoints with Ed25519: spec vectors, parsing and rejection."""

from __future__ import annotations

import base64
import hmac
import re

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointSigner,
    key_id,
    load_private_key_pem,
    load_public_key_pem,
    parse_checkpoint_note,
    parse_verifier_key,
    public_key_pem,
    split_note,
    verify_checkpoint,
    verify_note,
)

# AUDIT.md §4.3: TEST KEY with seed 00 01 .. 1f, the 8-leaf RFC 6962 tree's root.
TEST_SEED = bytes(range(32))
TEST_NAME = "example.com/audit-log"
TEST_ROOT = bytes.fromhex("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")
TEST_NOTE = (
    "example.com/audit-log\n"
    "8\n"
    "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n"
    "\n"
    "\u2014 example.com/audit-log B0mbLZLyh4863+NGjL2fjfvaQexYZxWZkzppLCjbqmguGY2Euk7E/AquVJOKG0FKm"
    "/11L34y0DGNJGXTje/dI5Y3/Q8=\n"
)
TEST_SIGNATURE_HEX = (
    "92f2878f3adfe3468cbd9f8dfbda41ec58671599933a692c28dbaa682e198d84"
    "ba4ec4fc0aae54938a1b414a9bfd752f7e32d0318d2465d38defdd239637fd0f"
)


def _test_signer() -> CheckpointSigner:
    return CheckpointSigner(TEST_NAME, Ed25519PrivateKey.from_private_bytes(TEST_SEED))


def test_c2sp_checkpoint_vector_is_reproduced_exactly() -> None:
    signer = _test_signer()
    assert signer.public_key.public_bytes_raw().hex() == (
        "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
    )
    assert signer.key_id.hex() == "07499b2d"
    assert signer.verifier_key() == (
        "example.com/audit-log+07499b2d+AQOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4"
    )
    checkpoint = Checkpoint(TEST_NAME, 8, TEST_ROOT)
    assert (
        checkpoint.body()
        == b"example.com/audit-log\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n"
    )
    assert signer.sign_bytes(checkpoint.body()).hex() == TEST_SIGNATURE_HEX
    assert signer.sign(checkpoint) == TEST_NOTE


def test_c2sp_checkpoint_vector_verifies_and_parses() -> None:
    public_key = Ed25519PrivateKey.from_private_bytes(TEST_SEED).public_key()
    assert verify_checkpoint(TEST_NOTE, public_key, TEST_NAME) == Checkpoint(
        TEST_NAME, 8, TEST_ROOT
    )
    checkpoint, signatures = parse_checkpoint_note(TEST_NOTE)
    assert checkpoint.size == 8
    assert signatures == [(TEST_NAME, bytes.fromhex("07499b2d" + TEST_SIGNATURE_HEX))]


def test_test_key_pem_matches_audit_md() -> None:
    public_key = Ed25519PrivateKey.from_private_bytes(TEST_SEED).public_key()
    pem = public_key_pem(public_key)
    assert "MCowBQYDK2VwAyEAA6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=" in pem
    assert load_public_key_pem(pem.encode()) == public_key


# signed-note spec example (AUDIT.md §4.1).
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n"
    "\n"
    "\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFX"
    "mRKuwHjG1Yu72IneyaQM=\n"
)


def test_signed_note_spec_example_verifies() -> None:
    name, spec_key_id, public_key = parse_verifier_key(SPEC_VKEY)
    assert name == "example.com/foo"
    assert public_key.public_bytes_raw().hex() == (
        "e932791ae6e7a840a46164c904786426d5e7821dd8b29a00d61cae72afdd4da4"
    )
    assert spec_key_id.hex() == "530d903a"
    assert key_id(name, public_key) == spec_key_id
    assert verify_note(SPEC_NOTE, public_key, name) == "This is an example message.\n"


def test_signed_note_spec_example_fails_when_the_text_changes() -> None:
    _, _, public_key = parse_verifier_key(SPEC_VKEY)
    with pytest.raises(CheckpointError, match="does not verify"):
        verify_note(
            SPEC_NOTE.replace("example message", "example massage"), public_key, "example.com/foo"
        )


def test_verifier_key_with_wrong_id_is_rejected() -> None:
    with pytest.raises(CheckpointError, match="key id does not match"):
        parse_verifier_key(SPEC_VKEY.replace("530d903a", "530d903b"))


def test_round_trip_with_a_fresh_key() -> None:
    signer = CheckpointSigner("fairunlock.example/audit", Ed25519PrivateKey.generate())
    checkpoint = Checkpoint("fairunlock.example/audit", 12345, bytes(range(32)))
    note = signer.sign(checkpoint)
    assert verify_checkpoint(note, signer.public_key, signer.name) == checkpoint
    assert parse_verifier_key(signer.verifier_key())[2] == signer.public_key


def test_signature_by_another_key_is_not_accepted() -> None:
    other = CheckpointSigner(TEST_NAME, Ed25519PrivateKey.generate())
    note = other.sign(Checkpoint(TEST_NAME, 8, TEST_ROOT))
    public_key = Ed25519PrivateKey.from_private_bytes(TEST_SEED).public_key()
    with pytest.raises(
        CheckpointError, match=re.escape("no signature by example.com/audit-log+07499b2d")
    ):
        verify_checkpoint(note, public_key, TEST_NAME)


def test_signature_under_another_name_is_not_accepted() -> None:
    public_key = Ed25519PrivateKey.from_private_bytes(TEST_SEED).public_key()
    with pytest.raises(CheckpointError, match="no signature"):
        verify_checkpoint(TEST_NOTE, public_key, "example.com/other")


def test_unknown_cosignatures_are_ignored_but_a_bad_known_one_rejects() -> None:
    public_key = Ed25519PrivateKey.from_private_bytes(TEST_SEED).public_key()
    witness = CheckpointSigner("witness.example", Ed25519PrivateKey.generate())
    witness_line = witness.sign(Checkpoint(TEST_NAME, 8, TEST_ROOT)).split("\n\n")[1]
    cosigned = TEST_NOTE + witness_line
    assert verify_checkpoint(cosigned, public_key, TEST_NAME).size == 8
    # A second line claiming our key id but carrying a wrong signature rejects the note.
    forged = base64.b64encode(bytes.fromhex("07499b2d") + bytes(64)).decode()
    with pytest.raises(CheckpointError, match="does not verify"):
        verify_checkpoint(TEST_NOTE + f"\u2014 {TEST_NAME} {forged}\n", public_key, TEST_NAME)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda note: note.replace("\n8\n", "\n9\n"), "does not verify"),
        (lambda note: note.replace("\n8\n", "\n08\n"), "leading zeros"),
        (lambda note: note.replace("\n8\n", "\n-8\n"), "not a decimal"),
        (lambda note: note.replace("\n8\n", "\n\u0668\n"), "not a decimal"),  # Arabic-Indic 8
        (lambda note: note.replace("XcnaeacG", "XcnaeacH"), "does not verify"),
        (lambda note: note.replace("=\n\n", "\n\n"), "not base64"),
        (lambda note: note.replace("\n\n", "\n"), "no blank line"),
        (lambda note: note.replace("\n\n", "\nextension\n\n"), "extension lines"),
        (lambda note: note[:-1], "end with a newline"),
        (lambda note: note.split("\n\n")[0] + "\n\n", "no signature lines"),
        (lambda note: note.replace("\u2014", "-"), "em dash"),
        (
            lambda note: note.replace(
                "\u2014 example.com/audit-log ", "\u2014 example.com/audit-log  "
            ),
            "not '",
        ),
        (lambda note: note.replace("8\n", "8\r\n", 1), "control character"),
        (lambda note: note.replace("B0mbLZLy", "B0mbLZLz"), "does not verify"),
    ],
)
def test_malformed_or_altered_notes_are_rejected(mutate: object, message: str) -> None:
    public_key = Ed25519PrivateKey.from_private_bytes(TEST_SEED).public_key()
    assert callable(mutate)
    with pytest.raises(CheckpointError, match=message):
        verify_checkpoint(mutate(TEST_NOTE), public_key, TEST_NAME)


def test_split_note_returns_the_signed_text_with_its_final_newline() -> None:
    text, signatures = split_note(TEST_NOTE)
    assert text.encode() == Checkpoint(TEST_NAME, 8, TEST_ROOT).body()
    assert len(signatures) == 1


@pytest.mark.parametrize(
    ("origin", "size", "root"),
    [("", 1, TEST_ROOT), ("a\nb", 1, TEST_ROOT), ("o", -1, TEST_ROOT), ("o", 1, b"short")],
)
def test_invalid_checkpoints_cannot_be_built(origin: str, size: int, root: bytes) -> None:
    with pytest.raises(CheckpointError):
        Checkpoint(origin, size, root)


@pytest.mark.parametrize("name", ["", "has space", "a+b"])
def test_signer_refuses_key_names_the_vkey_format_cannot_carry(name: str) -> None:
    with pytest.raises(CheckpointError):
        CheckpointSigner(name, Ed25519PrivateKey.generate())


def test_signer_repr_shows_no_key_material() -> None:
    signer = _test_signer()
    assert TEST_SEED.hex() not in repr(signer)
    assert "07499b2d" in repr(signer)


def test_pem_loaders_reject_other_key_types_and_garbage() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(CheckpointError, match="not Ed25519"):
        load_public_key_pem(ec_pem)
    with pytest.raises(CheckpointError, match="not a PEM"):
        load_public_key_pem(b"garbage")
    private = Ed25519PrivateKey.from_private_bytes(TEST_SEED)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert load_private_key_pem(private_pem).public_key() == private.public_key()
    assert isinstance(
        load_public_key_pem(public_key_pem(private.public_key()).encode()), Ed25519PublicKey
    )


def test_head_mac_is_the_keys_and_binds_origin_size_and_root() -> None:
    """Two processes holding one key make the same MAC of a head; any other key, origin, size or
    root gives another, and the MAC is not the raw key's (HKDF-derived, own context)."""
    key = Ed25519PrivateKey.from_private_bytes(TEST_SEED)
    one, two = CheckpointSigner(TEST_NAME, key), CheckpointSigner(TEST_NAME, key)
    mac = one.head_mac(TEST_NAME, 8, TEST_ROOT)
    assert len(mac) == 32
    assert two.head_mac(TEST_NAME, 8, TEST_ROOT) == mac
    others = {
        CheckpointSigner(TEST_NAME, Ed25519PrivateKey.generate()).head_mac(TEST_NAME, 8, TEST_ROOT),
        one.head_mac(TEST_NAME + "x", 8, TEST_ROOT),
        one.head_mac(TEST_NAME, 9, TEST_ROOT),
        one.head_mac(TEST_NAME, 8, bytes(32)),
        # the same message under the raw seed: the MAC's key is derived, not the signing key
        hmac.digest(TEST_SEED, _head_mac_message(TEST_NAME, 8, TEST_ROOT), "sha256"),
    }
    assert mac not in others
    assert len(others) == 5


def _head_mac_message(origin: str, size: int, root: bytes) -> bytes:
    encoded = origin.encode()
    return len(encoded).to_bytes(4, "big") + encoded + size.to_bytes(8, "big") + root


def test_head_mac_known_answer() -> None:
    """RFC 5869 HKDF-SHA256 (empty salt, info "fairunlock audit head mac v1") of the seed, then
    HMAC-SHA256 of (4-byte origin length, origin, 8-byte size, root), written out by hand here:
    a change to the derivation or the encoding would send every worker of a mixed deployment
    to the slow note check, so it must be deliberate."""
    prk = hmac.digest(bytes(32), TEST_SEED, "sha256")
    mac_key = hmac.digest(prk, b"fairunlock audit head mac v1\x01", "sha256")
    expected = hmac.digest(mac_key, _head_mac_message(TEST_NAME, 8, TEST_ROOT), "sha256")
    signer = CheckpointSigner(TEST_NAME, Ed25519PrivateKey.from_private_bytes(TEST_SEED))
    assert signer.head_mac(TEST_NAME, 8, TEST_ROOT) == expected
    assert expected.hex() == "cb3d2f77fd18f00e28f0f3a373fe7ce0f66356e218c2e5408cb64eea927cf396"


@pytest.mark.parametrize(("size", "root"), [(-1, TEST_ROOT), (2**63, TEST_ROOT), (8, b"x" * 31)])
def test_head_mac_refuses_what_is_not_a_head(size: int, root: bytes) -> None:
    signer = CheckpointSigner(TEST_NAME, Ed25519PrivateKey.from_private_bytes(TEST_SEED))
    with pytest.raises(CheckpointError, match="not a log head"):
        signer.head_mac(TEST_NAME, size, root)
