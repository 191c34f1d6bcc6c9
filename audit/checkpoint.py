"""C2SP tlog-checkpoint signed notes with Ed25519 (c2sp.org/signed-note, c2sp.org/tlog-checkpoint).

Pure code on the standard library and `cryptography` only: the offline verifier imports it.
A note is the body (origin, tree size, base64 root, each line ending in a newline), a blank line,
then signature lines "— <key name> base64(4-byte key id || 64-byte Ed25519 signature)".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from audit.merkle import HASH_SIZE

SIGNATURE_TYPE_ED25519 = 0x01
KEY_ID_SIZE = 4
ED25519_SIGNATURE_SIZE = 64
# The spec asks verifiers to accept at least 16 signatures; a bound keeps parsing cheap.
MAX_SIGNATURES = 100
_SIGNATURE_PREFIX = "\u2014 "  # em dash and a space
_MAX_SIZE = 2**63 - 1  # tree sizes are uint64 in every C2SP consumer; int64 in our database
# HKDF's info for the key of the log head's MAC (CheckpointSigner.head_mac): its own key, never
# the signing key itself, and a context no other use of the key shares.
_HEAD_MAC_INFO = b"fairunlock audit head mac v1"


class CheckpointError(ValueError):
    """A checkpoint note is malformed or its signature does not verify."""


def _b64decode_strict(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise CheckpointError(f"{what} is not base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise CheckpointError(f"{what} is not canonical base64")
    return raw


def _check_text(text: str, what: str) -> None:
    # signed-note forbids control characters other than newline; they could hide lines.
    for char in text:
        if (char < " " and char != "\n") or char == "\x7f":
            raise CheckpointError(f"{what} contains control character {char!r}")


def _check_key_name(name: str) -> None:
    if not name or any(char.isspace() or char == "+" for char in name):
        raise CheckpointError(f"key name {name!r} is empty or contains whitespace or '+'")
    _check_text(name, "key name")


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise CheckpointError("origin is empty or contains a newline")
        _check_text(self.origin, "origin")
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise CheckpointError("size is not an integer")
        if not 0 <= self.size <= _MAX_SIZE:
            raise CheckpointError(f"size {self.size} is out of range")
        if len(self.root) != HASH_SIZE:
            raise CheckpointError(f"root is {len(self.root)} bytes, not {HASH_SIZE}")

    def body(self) -> bytes:
        """The signed text: origin, size, base64 root, each followed by a newline."""
        root_b64 = base64.b64encode(self.root).decode("ascii")
        return f"{self.origin}\n{self.size}\n{root_b64}\n".encode()


def key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    """SHA-256(name || 0x0A || 0x01 || public key)[:4], as signed-note recommends."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([SIGNATURE_TYPE_ED25519]) + raw)
    return digest.digest()[:KEY_ID_SIZE]


def verifier_key(name: str, public_key: Ed25519PublicKey) -> str:
    """The signed-note vkey string "<name>+<hex key id>+<base64(0x01 || public key)>"."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    encoded = base64.b64encode(bytes([SIGNATURE_TYPE_ED25519]) + raw).decode("ascii")
    return f"{name}+{key_id(name, public_key).hex()}+{encoded}"


class CheckpointSigner:
    """Holds the log's Ed25519 key; load it once per process and reuse this object."""

    __slots__ = ("_head_mac_key", "_private_key", "key_id", "last_signed", "name", "public_key")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        _check_key_name(name)
        self.name = name
        self._private_key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(name, self.public_key)
        seed = private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        self._head_mac_key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=_HEAD_MAC_INFO
        ).derive(seed)
        # (size, root) of the last checkpoint this object signed: a head that matches it needs no
        # second look before it is extended (audit.integrator checks every other head).
        self.last_signed: tuple[int, bytes] | None = None

    def __repr__(self) -> str:  # never show key material
        return f"CheckpointSigner(name={self.name!r}, key_id={self.key_id.hex()})"

    def sign(self, cp: Checkpoint) -> str:
        body = cp.body()
        signature = self._private_key.sign(body)
        self.last_signed = (cp.size, cp.root)
        encoded = base64.b64encode(self.key_id + signature).decode("ascii")
        return f"{body.decode()}\n{_SIGNATURE_PREFIX}{self.name} {encoded}\n"

    def head_mac(self, origin: str, size: int, root: bytes) -> bytes:
        """HMAC-SHA256 of a log head (origin, size, root) under a key derived from the signing
        key: what the integrator stores beside the head it signed, so that another process
        holding the same key can tell that head is one this key signed with one HMAC instead
        of reading and verifying the Ed25519 note (audit.integrator). Nobody without the key
        can make one for another head."""
        if not 0 <= size <= _MAX_SIZE or len(root) != HASH_SIZE:
            raise CheckpointError(f"not a log head: size {size}, {len(root)}-byte root")
        origin_bytes = origin.encode()
        message = b"".join(
            (len(origin_bytes).to_bytes(4, "big"), origin_bytes, size.to_bytes(8, "big"), root)
        )
        return hmac.digest(self._head_mac_key, message, "sha256")

    def sign_bytes(self, data: bytes) -> bytes:
        """Raw 64-byte Ed25519 signature (PureEdDSA), as `openssl pkeyutl -rawin` makes."""
        return self._private_key.sign(data)

    def verifier_key(self) -> str:
        return verifier_key(self.name, self.public_key)


def split_note(note: str) -> tuple[str, list[tuple[str, bytes]]]:
    """Split a signed note into its text (with final newline) and (key name, key id || sig) pairs.

    Signatures are not checked here; use verify_note or verify_checkpoint.
    """
    _check_text(note, "note")
    if not note.endswith("\n"):
        raise CheckpointError("note does not end with a newline")
    # The text itself holds no blank line, so the first one separates text from signatures.
    text, separator, signature_text = note.partition("\n\n")
    if not separator:
        raise CheckpointError("note has no blank line before the signatures")
    signature_lines = signature_text.split("\n")[:-1]  # the note ends in a newline
    if not signature_lines:
        raise CheckpointError("note has no signature lines")
    if len(signature_lines) > MAX_SIGNATURES:
        raise CheckpointError(f"note has more than {MAX_SIGNATURES} signatures")
    signatures: list[tuple[str, bytes]] = []
    for line_no, line in enumerate(signature_lines, start=1):
        if not line.startswith(_SIGNATURE_PREFIX):
            raise CheckpointError(f"signature line {line_no} does not start with an em dash")
        parts = line[len(_SIGNATURE_PREFIX) :].split(" ")
        if len(parts) != 2 or not parts[0]:
            raise CheckpointError(f"signature line {line_no} is not '— <name> <signature>'")
        name, encoded = parts
        raw = _b64decode_strict(encoded, f"signature line {line_no}")
        if len(raw) < KEY_ID_SIZE + 1:
            raise CheckpointError(f"signature line {line_no} is too short")
        signatures.append((name, raw))
    return text + "\n", signatures


def verify_note(note: str, public_key: Ed25519PublicKey, name: str) -> str:
    """The note text, if `note` carries a valid Ed25519 signature by (name, public_key).

    Signatures by other keys are ignored (cosigners, witnesses); a signature that claims to be
    from this key but does not verify rejects the whole note, as signed-note advises.
    """
    text, signatures = split_note(note)
    body = text.encode()
    expected_id = key_id(name, public_key)
    verified = False
    for signer_name, raw in signatures:
        if signer_name != name or raw[:KEY_ID_SIZE] != expected_id:
            continue
        signature = raw[KEY_ID_SIZE:]
        if len(signature) != ED25519_SIGNATURE_SIZE:
            raise CheckpointError(f"signature by {name} is {len(signature)} bytes, not 64")
        try:
            public_key.verify(signature, body)
        except InvalidSignature:
            raise CheckpointError(f"signature by {name} does not verify") from None
        verified = True
    if not verified:
        found = ", ".join(f"{n}+{raw[:KEY_ID_SIZE].hex()}" for n, raw in signatures)
        raise CheckpointError(
            f"no signature by {name}+{expected_id.hex()} (found: {found or 'none'})"
        )
    return text


def _parse_checkpoint_text(text: str) -> Checkpoint:
    lines = text.split("\n")[:-1]
    if len(lines) < 3:
        raise CheckpointError(f"checkpoint body has {len(lines)} lines, expected 3")
    if len(lines) > 3:
        raise CheckpointError("checkpoint extension lines are not supported")
    origin, size_text, root_text = lines
    if not size_text.isascii() or not size_text.isdigit():
        raise CheckpointError(f"tree size {size_text!r} is not a decimal number")
    if size_text != "0" and size_text.startswith("0"):
        raise CheckpointError(f"tree size {size_text!r} has leading zeros")
    if len(size_text) > 20:
        raise CheckpointError("tree size is too large")
    root = _b64decode_strict(root_text, "root hash")
    return Checkpoint(origin=origin, size=int(size_text), root=root)


def parse_checkpoint_note(note: str) -> tuple[Checkpoint, list[tuple[str, bytes]]]:
    """The checkpoint and its (key name, key id || signature) pairs, signatures unchecked."""
    text, signatures = split_note(note)
    return _parse_checkpoint_text(text), signatures


def verify_checkpoint(note: str, public_key: Ed25519PublicKey, name: str) -> Checkpoint:
    """The checkpoint, if `note` is well formed and signed by (name, public_key)."""
    # Parse first so a malformed note is reported as such, not as a signature failure.
    checkpoint = _parse_checkpoint_text(split_note(note)[0])
    verify_note(note, public_key, name)
    return checkpoint


def parse_verifier_key(vkey: str) -> tuple[str, bytes, Ed25519PublicKey]:
    """(name, key id, public key) from "<name>+<hex key id>+<base64(0x01 || key)>"."""
    name, plus, rest = vkey.partition("+")
    hex_id, plus2, encoded = rest.partition("+")
    if not plus or not plus2:
        raise CheckpointError("verifier key is not <name>+<key id>+<key>")
    _check_key_name(name)
    try:
        claimed_id = bytes.fromhex(hex_id)
    except ValueError:
        raise CheckpointError("verifier key id is not hex") from None
    raw = _b64decode_strict(encoded, "verifier key")
    if len(raw) != 33 or raw[0] != SIGNATURE_TYPE_ED25519:
        raise CheckpointError("verifier key is not an Ed25519 (type 0x01) key")
    public_key = Ed25519PublicKey.from_public_bytes(raw[1:])
    if len(claimed_id) != KEY_ID_SIZE or claimed_id != key_id(name, public_key):
        raise CheckpointError("verifier key id does not match its name and key")
    return name, claimed_id, public_key


def public_key_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_public_key_pem(data: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointError(f"public key is {type(key).__name__}, not Ed25519")
    return key


def load_private_key_pem(data: bytes) -> Ed25519PrivateKey:
    """An unencrypted PKCS#8 PEM Ed25519 key, as `openssl genpkey -algorithm ed25519` writes."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CheckpointError(f"private key is {type(key).__name__}, not Ed25519")
    return key
