"""Who is in the mesh: the mesh CA, node keys and certificates, and checking a peer's certificate.

A mesh is defined by one Ed25519 key pair (the mesh CA, made by `meshnode mesh init`). Every node has
its own Ed25519 key and an X.509 certificate signed by the CA (`meshnode node init`). Peers meet over
TLS 1.3 with mutual certificate authentication (see net/tls.py); after the handshake the daemon calls
`verify_peer_certificate` on the peer's certificate to learn its node id.

    mesh id = SHA-256(raw 32-byte CA public key)
    node id = SHA-256(raw 32-byte node public key)

The node id is also written into the certificate (SAN URI `meshnode://node/<64 hex>`) so that tools
can read it without hashing; the check here makes sure the two agree.

Only `cryptography` is used; nothing here is hand-rolled.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import re
import stat
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID

from .atomic import write_atomic
from .display import safe_text
from .wire.packet import public_key_problem

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CA_VALIDITY",
    "DEFAULT_NODE_VALIDITY",
    "NODE_CERT_FILE",
    "NODE_KEY_FILE",
    "NODE_NAME_RULE",
    "NODE_URI_PREFIX",
    "IdentityError",
    "IdentityReason",
    "MeshCA",
    "NodeIdentity",
    "PeerInfo",
    "check_claimed_name",
    "init_mesh",
    "init_node",
    "is_valid_node_name",
    "issue_node_certificate",
    "load_ca_certificate",
    "load_mesh",
    "load_node_dir",
    "load_node_identity",
    "mesh_id_of",
    "node_id_of",
    "short_hex",
    "validate_node_name",
    "verify_peer_certificate",
]

log = logging.getLogger(__name__)

CA_KEY_FILE = "ca.key"
CA_CERT_FILE = "ca.crt"
NODE_KEY_FILE = "node.key"
NODE_CERT_FILE = "node.crt"

NODE_URI_PREFIX = "meshnode://node/"
# The CA outlives every node certificate; re-keying a mesh means re-enrolling every node.
CA_VALIDITY = _dt.timedelta(days=20 * 365)
DEFAULT_NODE_VALIDITY = _dt.timedelta(days=365)
# Certificates start slightly in the past so that a peer whose clock is a few minutes behind ours
# does not refuse a certificate we have just issued.
_BACKDATE = _dt.timedelta(minutes=5)
# Short ids are for humans and mDNS: 64 bits is plenty to tell meshes apart on one LAN. Authentication
# never relies on them (TLS checks the full chain).
_SHORT_BYTES = 8
# The node name grammar. Names go into certificates (CN, at most 64 characters in X.509), log lines,
# `meshnode peers` and file names, and a peer chooses them: so ASCII letters, digits and ". _ -" only,
# starting with a letter or digit. Nothing in it is a control character, whitespace, a path separator,
# a shell or TOML metacharacter or rich markup ("[" "]"), so a name is safe to print and to use as a file
# name as it is. Enforced when a certificate is issued (`issue_node_certificate`, `meshnode node init`,
# node.name in node.toml), and again whenever a certificate is read: our own at load and every peer's
# (`_check_node_cert`, for TLS and for relayed hellos), so a CA used outside meshnode cannot smuggle one in.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NODE_NAME_RULE = "1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"


class IdentityReason(StrEnum):
    MISSING = "missing"              # a key or certificate file does not exist
    CORRUPT = "corrupt"              # a file is not what it should be (not PEM, wrong key type...)
    EXISTS = "exists"                # init would overwrite existing material
    BAD_NAME = "bad_name"            # a node name that cannot go into a certificate
    BAD_CERTIFICATE = "bad_certificate"  # malformed or not a meshnode node certificate
    OTHER_MESH = "other_mesh"        # issued by a different CA
    FORGED = "forged"                # claims our CA but the signature or node id does not check out
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    KEY_MISMATCH = "key_mismatch"    # the private key does not belong to the certificate
    BAD_MODE = "bad_mode"            # a private key file that group or others may access


class IdentityError(Exception):
    """Missing, corrupt or unacceptable identity material. `reason` is a stable code for counters."""

    def __init__(self, reason: IdentityReason, message: str) -> None:
        self.reason = IdentityReason(reason)
        super().__init__(message)


# --------------------------------------------------------------------------------------------- ids


def short_hex(digest: bytes) -> str:
    """The first 8 bytes of an id as 16 hex characters, for humans, logs and mDNS."""
    return digest[:_SHORT_BYTES].hex()


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def node_id_of(public_key: Ed25519PublicKey | bytes) -> bytes:
    """SHA-256 of the raw 32-byte Ed25519 public key."""
    raw = public_key if isinstance(public_key, bytes) else _raw(public_key)
    return hashlib.sha256(raw).digest()


mesh_id_of = node_id_of  # same rule, applied to the CA key; two names so call sites say which


def is_valid_node_name(name: object) -> bool:
    """Whether `name` follows the node name grammar (NODE_NAME_RULE)."""
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None


def validate_node_name(name: str) -> str:
    """`name`, or IdentityError(BAD_NAME) saying the rule; the name is quoted escaped (it may be a peer's)."""
    if not is_valid_node_name(name):
        raise IdentityError(IdentityReason.BAD_NAME,
                            f"node name '{safe_text(name, limit=80)}' must be {NODE_NAME_RULE}")
    return name


def check_claimed_name(claimed: object, certified: str) -> str:
    """The name a peer's hello claims, if it is the name its certificate carries; IdentityError(BAD_NAME)
    otherwise. A hello's `name` field is the peer's own word; only the certificate's name was checked
    by the mesh CA, so a hello must not show a different one (two peers "b", a name with a newline)."""
    if claimed != certified:
        raise IdentityError(
            IdentityReason.BAD_NAME,
            f"hello names the node '{safe_text(claimed, limit=80)}' but its certificate names it "
            f"'{safe_text(certified, limit=80)}'",
        )
    return certified


# ------------------------------------------------------------------------------------ dataclasses


@dataclass(frozen=True)
class MeshCA:
    """The mesh CA: its key (kept by whoever enrols nodes, never copied to nodes) and certificate."""

    private_key: Ed25519PrivateKey
    public_key_bytes: bytes
    cert: x509.Certificate
    cert_pem: bytes
    mesh_id: bytes
    key_path: Path | None
    cert_path: Path | None

    @property
    def mesh_id_short(self) -> str:
        return short_hex(self.mesh_id)


@dataclass(frozen=True)
class NodeIdentity:
    """One node's key, its certificate, and the mesh CA certificate it trusts."""

    name: str
    private_key: Ed25519PrivateKey
    public_key_bytes: bytes
    node_id: bytes
    cert: x509.Certificate
    cert_pem: bytes
    ca_cert: x509.Certificate
    ca_cert_pem: bytes
    mesh_id: bytes
    not_after: _dt.datetime
    key_path: Path | None
    cert_path: Path | None
    ca_cert_path: Path | None

    @property
    def node_id_hex(self) -> str:
        return self.node_id.hex()

    @property
    def mesh_id_short(self) -> str:
        return short_hex(self.mesh_id)

    @property
    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class PeerInfo:
    """What a verified peer certificate tells us."""

    node_id: bytes
    name: str
    not_after: _dt.datetime
    public_key_bytes: bytes  # to verify packets this peer signs

    @property
    def node_id_hex(self) -> str:
        return self.node_id.hex()


# ---------------------------------------------------------------------------------- file writing


def _check_free(paths: list[Path], force: bool) -> None:
    if force:
        return
    for p in paths:
        if p.exists() or p.is_symlink():
            raise IdentityError(
                IdentityReason.EXISTS, f"{p}: already exists; refusing to overwrite (use force to replace it)"
            )


def _write_file(path: Path, data: bytes, mode: int, *, force: bool) -> None:
    """Write atomically with the final mode from the start (see meshnode.atomic); without force an
    existing file is refused, atomically, so two concurrent inits cannot both win."""
    try:
        write_atomic(path, data, mode=mode, replace=force)
    except FileExistsError:
        raise IdentityError(IdentityReason.EXISTS, f"{path}: already exists; refusing to overwrite") from None


def _key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _now(now: _dt.datetime | float | None) -> _dt.datetime:
    if now is None:
        return _dt.datetime.now(_dt.timezone.utc)
    if isinstance(now, (int, float)):
        return _dt.datetime.fromtimestamp(now, _dt.timezone.utc)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    return now


# --------------------------------------------------------------------------------------- mesh CA


def _ca_subject(mesh_id: bytes) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"meshnode mesh {short_hex(mesh_id)}")])


def init_mesh(directory: str | os.PathLike[str], *, force: bool = False,
              now: _dt.datetime | float | None = None, key: Ed25519PrivateKey | None = None,
              serial: int | None = None) -> MeshCA:
    """Create a mesh CA in `directory` (ca.key 0600, ca.crt). Refuses to overwrite unless `force`.
    `key` and `serial` default to fresh random ones; the simulator passes seeded ones so that a
    simulated mesh is the same on every run."""
    d = Path(directory)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path, cert_path = d / CA_KEY_FILE, d / CA_CERT_FILE
    _check_free([key_path, cert_path], force)

    key = key if key is not None else Ed25519PrivateKey.generate()
    pub = key.public_key()
    mesh_id = mesh_id_of(pub)
    start = _now(now) - _BACKDATE
    name = _ca_subject(mesh_id)
    ski = x509.SubjectKeyIdentifier.from_public_key(pub)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pub)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + CA_VALIDITY)
        # path_length=0: the CA signs node certificates only, never intermediate CAs.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, None)  # Ed25519 takes no separate hash
    )
    _write_file(key_path, _key_pem(key), 0o600, force=force)
    _write_file(cert_path, _cert_pem(cert), 0o644, force=force)
    return MeshCA(key, _raw(pub), cert, _cert_pem(cert), mesh_id, key_path, cert_path)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise IdentityError(IdentityReason.MISSING, f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise IdentityError(IdentityReason.CORRUPT, f"{path}: {what} expected, found a directory") from None
    except OSError as e:
        raise IdentityError(IdentityReason.MISSING, f"{path}: cannot read {what}: {e.strerror}") from None


def _check_key_mode(path: Path) -> None:
    """Refuse a private key that group or others may read or write, as OpenSSH does.

    A warning was not enough: nobody reads a daemon's start-up log until something breaks, and a key
    others can read is no longer this node's alone (anyone with it is this node to the whole mesh).
    The mode of the file itself (a symlink is followed). `init_mesh` / `init_node` write keys 0600
    whatever the umask, so only a key copied or unpacked by hand (a 0644 volume, a secret mounted
    with its default mode) trips this; the message says the fix."""
    if os.name != "posix":   # no Unix modes to check (Windows ACLs are another story)
        return
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return   # _read has already said what is wrong with the file itself
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            IdentityReason.BAD_MODE,
            f"{path}: private key is accessible by group or others (mode {mode:04o}); "
            f"run `chmod 600 {path}` (a key others can read is not secret)",
        )


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    data = _read(path, "private key")
    _check_key_mode(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise IdentityError(
            IdentityReason.CORRUPT, f"{path}: not an unencrypted PEM private key ({e})"
        ) from None
    except Exception as e:  # cryptography raises UnsupportedAlgorithm for exotic keys
        raise IdentityError(IdentityReason.CORRUPT, f"{path}: cannot load private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(
            IdentityReason.CORRUPT, f"{path}: expected an Ed25519 private key, got {type(key).__name__}"
        )
    return key


def _load_cert(path: Path, what: str) -> tuple[x509.Certificate, bytes]:
    data = _read(path, what)
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError as e:
        raise IdentityError(IdentityReason.CORRUPT, f"{path}: not a PEM X.509 certificate ({e})") from None
    if not isinstance(cert.public_key(), Ed25519PublicKey):
        raise IdentityError(IdentityReason.CORRUPT, f"{path}: {what} does not hold an Ed25519 public key")
    return cert, _cert_pem(cert)


def load_ca_certificate(path: str | os.PathLike[str]) -> x509.Certificate:
    """Load and sanity-check a mesh CA certificate (self-signed Ed25519 CA)."""
    p = Path(path)
    cert, _ = _load_cert(p, "mesh CA certificate")
    _check_ca_cert(cert, str(p))
    return cert


def _check_ca_cert(cert: x509.Certificate, where: str) -> None:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise IdentityError(
            IdentityReason.CORRUPT, f"{where}: not a CA certificate (basicConstraints CA missing)"
        )
    try:
        cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes)  # type: ignore[union-attr]
    except InvalidSignature:
        raise IdentityError(IdentityReason.CORRUPT, f"{where}: CA certificate is not self-signed") from None


def load_mesh(directory: str | os.PathLike[str]) -> MeshCA:
    """Load the mesh CA written by `init_mesh`; checks that key and certificate belong together."""
    d = Path(directory)
    key_path, cert_path = d / CA_KEY_FILE, d / CA_CERT_FILE
    key = _load_private_key(key_path)
    cert, pem = _load_cert(cert_path, "mesh CA certificate")
    _check_ca_cert(cert, str(cert_path))
    pub_raw = _raw(key.public_key())
    if _raw(cert.public_key()) != pub_raw:  # type: ignore[arg-type]
        raise IdentityError(IdentityReason.KEY_MISMATCH, f"{key_path}: key does not match {cert_path}")
    return MeshCA(key, pub_raw, cert, pem, mesh_id_of(pub_raw), key_path, cert_path)


# ------------------------------------------------------------------------------------------ nodes


def issue_node_certificate(
    ca: MeshCA,
    public_key: Ed25519PublicKey,
    name: str,
    *,
    validity: _dt.timedelta = DEFAULT_NODE_VALIDITY,
    now: _dt.datetime | float | None = None,
    serial: int | None = None,
    unsafe_key: bool = False,
) -> x509.Certificate:
    """Sign a node certificate for `public_key` (also what a future `node renew` would call); `unsafe_key`
    only lets tests make the certificate a daemon must refuse."""
    validate_node_name(name)
    problem = public_key_problem(_raw(public_key))
    if problem is not None and not unsafe_key:
        raise ValueError(f"refusing to certify an unusable node key: {problem}")
    if validity <= _dt.timedelta(0):
        raise ValueError("validity must be positive")
    start = _now(now) - _BACKDATE
    end = min(start + _BACKDATE + validity, ca.cert.not_valid_after_utc)  # never outlive the CA
    node_id = node_id_of(public_key)
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        # Every node both accepts and dials, so one certificate serves both ends of TLS.
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([
                x509.UniformResourceIdentifier(NODE_URI_PREFIX + node_id.hex()),
                x509.DNSName("localhost"),
            ]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca.private_key, None)
    )


def init_node(
    directory: str | os.PathLike[str],
    ca: MeshCA,
    name: str,
    *,
    validity: _dt.timedelta = DEFAULT_NODE_VALIDITY,
    force: bool = False,
    now: _dt.datetime | float | None = None,
    key: Ed25519PrivateKey | None = None,
    serial: int | None = None,
) -> NodeIdentity:
    """Create node.key (0600), node.crt (signed by `ca`) and a copy of ca.crt in `directory`
    (`key` and `serial`: see init_mesh)."""
    validate_node_name(name)
    d = Path(directory)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path, cert_path, ca_path = d / NODE_KEY_FILE, d / NODE_CERT_FILE, d / CA_CERT_FILE
    _check_free([key_path, cert_path, ca_path], force)
    key = key if key is not None else Ed25519PrivateKey.generate()
    cert = issue_node_certificate(ca, key.public_key(), name, validity=validity, now=now, serial=serial)
    _write_file(key_path, _key_pem(key), 0o600, force=force)
    _write_file(cert_path, _cert_pem(cert), 0o644, force=force)
    _write_file(ca_path, ca.cert_pem, 0o644, force=force)
    return load_node_identity(key_path, cert_path, ca_path)


def load_node_identity(
    key_path: str | os.PathLike[str],
    cert_path: str | os.PathLike[str],
    ca_cert_path: str | os.PathLike[str],
) -> NodeIdentity:
    """Load a node's key, certificate and mesh CA certificate, and check that they fit together.

    The validity window is not checked here (a daemon may want to start and report "expired");
    call `verify_peer_certificate(identity.cert_der, identity, now=...)` for that.
    """
    kp, cp, ap = Path(key_path), Path(cert_path), Path(ca_cert_path)
    key = _load_private_key(kp)
    cert, pem = _load_cert(cp, "node certificate")
    ca_cert, ca_pem = _load_cert(ap, "mesh CA certificate")
    _check_ca_cert(ca_cert, str(ap))
    pub_raw = _raw(key.public_key())
    if _raw(cert.public_key()) != pub_raw:  # type: ignore[arg-type]
        raise IdentityError(IdentityReason.KEY_MISMATCH, f"{kp}: key does not match certificate {cp}")
    # Same checks as for a peer, minus the clock: catches a node.crt from another mesh early.
    try:
        info = _check_node_cert(cert, ca_cert)
    except IdentityError as e:
        raise IdentityError(e.reason, f"{cp}: {e}") from None
    ca_raw = _raw(ca_cert.public_key())  # type: ignore[arg-type]
    return NodeIdentity(
        name=info.name, private_key=key, public_key_bytes=pub_raw, node_id=info.node_id, cert=cert,
        cert_pem=pem, ca_cert=ca_cert, ca_cert_pem=ca_pem, mesh_id=mesh_id_of(ca_raw),
        not_after=info.not_after, key_path=kp, cert_path=cp, ca_cert_path=ap,
    )


def load_node_dir(directory: str | os.PathLike[str]) -> NodeIdentity:
    """`load_node_identity` with the file names `init_node` uses."""
    d = Path(directory)
    return load_node_identity(d / NODE_KEY_FILE, d / NODE_CERT_FILE, d / CA_CERT_FILE)


# -------------------------------------------------------------------------------- peer checking


def _ca_cert_of(ca: MeshCA | NodeIdentity | x509.Certificate) -> x509.Certificate:
    if isinstance(ca, MeshCA):
        return ca.cert
    if isinstance(ca, NodeIdentity):
        return ca.ca_cert
    return ca


def _check_node_cert(cert: x509.Certificate, ca_cert: x509.Certificate) -> PeerInfo:
    """Everything but the clock: issued by this CA, an Ed25519 leaf, SAN node id = hash of its key."""
    ours = short_hex(mesh_id_of(_raw(ca_cert.public_key())))  # type: ignore[arg-type]
    if cert.issuer != ca_cert.subject:
        raise IdentityError(
            IdentityReason.OTHER_MESH,
            f"certificate issued by {cert.issuer.rfc4514_string()!r}, not by our mesh {ours} (another mesh?)",
        )
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.ED25519:
        raise IdentityError(
            IdentityReason.FORGED, "certificate is not signed with Ed25519 (not from our mesh CA)"
        )
    try:
        ca_cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes)  # type: ignore[union-attr]
    except InvalidSignature:
        raise IdentityError(
            IdentityReason.FORGED,
            f"certificate names our mesh {ours} as issuer but its signature does not verify (forged?)",
        ) from None
    pub = cert.public_key()
    if not isinstance(pub, Ed25519PublicKey):
        raise IdentityError(IdentityReason.BAD_CERTIFICATE, "certificate key is not Ed25519")
    problem = public_key_problem(_raw(pub))
    if problem is not None:
        # a small-order or non-canonical key verifies forged signatures (SPEC §2): no node may have one
        raise IdentityError(IdentityReason.BAD_CERTIFICATE, f"certificate key is unusable: {problem}")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if bc.ca:
            raise IdentityError(IdentityReason.BAD_CERTIFICATE, "a CA certificate is not a node certificate")
    except x509.ExtensionNotFound:
        pass
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise IdentityError(
            IdentityReason.BAD_CERTIFICATE, "certificate has no subjectAltName with a node id"
        ) from None
    uris = [
        u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(NODE_URI_PREFIX)
    ]
    if len(uris) != 1:
        raise IdentityError(
            IdentityReason.BAD_CERTIFICATE,
            f"certificate must carry exactly one {NODE_URI_PREFIX} URI, has {len(uris)}",
        )
    pub_raw = _raw(pub)
    node_id = node_id_of(pub_raw)
    claimed = uris[0][len(NODE_URI_PREFIX):].lower()
    if claimed != node_id.hex():
        raise IdentityError(
            IdentityReason.FORGED,
            f"certificate claims node id {claimed[:16]}... but its key hashes to {short_hex(node_id)}...",
        )
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise IdentityError(
            IdentityReason.BAD_CERTIFICATE, f"certificate must carry exactly one common name, has {len(cns)}"
        )
    name = cns[0].value
    if not isinstance(name, str) or not is_valid_node_name(name):
        # Signed by our CA, yet not a name `meshnode node init` would have issued (the CA was used by
        # another tool): refused here, before the name reaches a log line, `meshnode peers` or a file name.
        raise IdentityError(
            IdentityReason.BAD_CERTIFICATE,
            f"certificate of node {short_hex(node_id)} names it '{safe_text(name, limit=80)}', "
            f"which is not a node name ({NODE_NAME_RULE})",
        )
    return PeerInfo(node_id=node_id, name=name, not_after=cert.not_valid_after_utc, public_key_bytes=pub_raw)


def verify_peer_certificate(
    der: bytes,
    ca: MeshCA | NodeIdentity | x509.Certificate,
    *,
    now: _dt.datetime | float,
) -> PeerInfo:
    """Check a peer's DER certificate against our mesh CA and return who it is.

    `ca` is our mesh CA (a NodeIdentity carries it); `now` is the clock (aware datetime or Unix
    seconds) so tests and the simulator can move time. Raises IdentityError with reason
    OTHER_MESH, FORGED, EXPIRED, NOT_YET_VALID or BAD_CERTIFICATE.

    TLS has already checked the chain when this runs on a live connection; this repeats the
    signature check on purpose so that the function is safe on its own (captures, tools) and
    adds what TLS cannot know: the node id binding.
    """
    try:
        cert = x509.load_der_x509_certificate(der)
    except (ValueError, TypeError) as e:
        raise IdentityError(IdentityReason.BAD_CERTIFICATE, f"not a DER X.509 certificate ({e})") from None
    info = _check_node_cert(cert, _ca_cert_of(ca))
    t = _now(now)
    if t < cert.not_valid_before_utc:
        raise IdentityError(
            IdentityReason.NOT_YET_VALID,
            f"certificate of {info.name!r} is not valid before {cert.not_valid_before_utc.isoformat()} "
            f"(now {t.isoformat()}; clock skew?)",
        )
    if t > cert.not_valid_after_utc:
        raise IdentityError(
            IdentityReason.EXPIRED,
            f"certificate of {info.name!r} expired on {cert.not_valid_after_utc.isoformat()} "
            f"(now {t.isoformat()})",
        )
    return info

