"""Manifest signatures: who published a version, not only what it holds.

A manifest's sha256 list proves the files are the ones it names, but anyone
who can write to the registry can change a file and its sha256 together (a
shifted ``candidate_ids.npy`` then passes every check and the recall self-test,
and every answer is wrong). With a signing key, the publisher signs the
manifest's bytes with Ed25519 (``manifest.sig``); a service given the public
key refuses a version whose manifest is unsigned or signed by another key.
Services hold only the public key, so a compromised replica cannot publish.

Catalogue deltas (``deltas``) change what a loaded version serves, so they are
signed too, by the same key: each delta's commit record carries a signature of
its own bytes, which name the model, the version, the delta's sha256 and the
previous record's (the chain), so a signed delta can be neither altered nor
moved to another version's log.

Keys are PEM files, e.g. ``openssl genpkey -algorithm ed25519 -out signing.pem``
and ``openssl pkey -in signing.pem -pubout -out signing.pub``.
"""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from model_registry.manifest import MANIFEST_FILE, SIGNATURE_FILE, VersionError


def private_key(pem: str) -> Ed25519PrivateKey:
    """The Ed25519 signing key in ``pem``; raises ValueError for anything else."""
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except TypeError:  # "Password was not given but private key is encrypted": a traceback in every tool
        raise ValueError("the signing key is encrypted (password-protected): the tools read it unencrypted, as "
                         "`openssl genpkey -algorithm ed25519` writes it") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"the signing key is {type(key).__name__}, not an Ed25519 private key")
    return key


def public_key(path: str | Path) -> Ed25519PublicKey:
    """The Ed25519 public key in the PEM file ``path``; raises ValueError for anything else."""
    try:
        key = load_pem_public_key(Path(path).read_bytes())
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def sign(version_dir: Path, key: Ed25519PrivateKey) -> None:
    """Writes the signature of ``version_dir``'s manifest next to it."""
    (version_dir / SIGNATURE_FILE).write_bytes(key.sign((version_dir / MANIFEST_FILE).read_bytes()))


def verify(version_dir: Path, key: Ed25519PublicKey) -> bytes:
    """Raises VersionError unless ``version_dir``'s manifest carries a signature by ``key``; returns the manifest's
    bytes it verified: read them (``verify_version(..., manifest_bytes=)``), not the file again, which a writer
    may have swapped since."""
    try:
        signature = (version_dir / SIGNATURE_FILE).read_bytes()
    except FileNotFoundError:
        raise VersionError(f"{version_dir} has no {SIGNATURE_FILE}: the version is unsigned, and this service "
                           "only loads versions signed by the publisher's key") from None
    try:
        manifest = (version_dir / MANIFEST_FILE).read_bytes()
    except FileNotFoundError:
        raise VersionError(f"{version_dir} has no {MANIFEST_FILE}: not a published version") from None
    try:
        key.verify(signature, manifest)
    except InvalidSignature:
        raise VersionError(f"{version_dir}/{MANIFEST_FILE} does not match its signature: altered after publishing, "
                           "or signed by another key") from None
    return manifest


def check_delta_signer(version_dir: Path, key: Ed25519PrivateKey | None) -> bytes | None:
    """Raises VersionError, before anything is written, if a catalogue delta of
    ``version_dir``'s version signed by ``key`` (None: unsigned) is one that its
    replicas would refuse. A signed version is served only by replicas that
    verify, and they refuse an unsigned delta or one by another key; the refused
    delta would stay in the log, and every later load of the version fails on it.
    With a key, the version must be signed by it: returns the manifest's bytes
    verified (parse those), so that a tool holding the key reads, and runs, only
    what the key's holder published (a writer could remove a signature to have it
    load a tower of theirs); None without a key."""
    signature = version_dir / SIGNATURE_FILE
    if key is None:
        if signature.is_file():
            raise VersionError(f"version {version_dir.name} is signed, so its replicas apply only signed deltas: "
                               "sign this one with the publisher's key (--signing-key-file)")
        return None
    if not signature.is_file():
        raise VersionError(f"version {version_dir.name} is unsigned, and a signing key signs deltas only of "
                           "versions it signed (its replicas verify nothing, and a tool holding the key does not "
                           "run a tower no one vouches for): leave out --signing-key-file, or publish the version "
                           "signed")
    try:
        return verify(version_dir, key.public_key())
    except VersionError:
        raise VersionError(f"version {version_dir.name} was not signed by this signing key, and its replicas apply "
                           "only deltas signed by the key that signed it: give the publisher's key") from None


def sign_bytes(data: bytes, key: Ed25519PrivateKey) -> str:
    """The signature of ``data`` by ``key``, base64 (for a JSON record)."""
    return base64.b64encode(key.sign(data)).decode()


def verify_bytes(data: bytes, signature: str | None, key: Ed25519PublicKey, what: str) -> None:
    """Raises VersionError, naming ``what``, unless ``signature`` (``sign_bytes``) is ``key``'s of ``data``."""
    if not signature:
        raise VersionError(f"{what} is unsigned, and this service only applies what the publisher's key signed")
    try:
        key.verify(base64.b64decode(signature, validate=True), data)
    except (InvalidSignature, ValueError):
        raise VersionError(f"{what} does not match its signature: altered after it was written, or signed by "
                           "another key") from None
