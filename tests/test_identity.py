"""Mesh CA and node identity: files, certificates, and checking a peer's certificate."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshnode import identity as idm
from meshnode.identity import IdentityError, IdentityReason as R

UTC = dt.timezone.utc


def _raw(pub) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory) -> idm.MeshCA:
    return idm.init_mesh(tmp_path_factory.mktemp("mesh"))


@pytest.fixture(scope="module")
def other_mesh(tmp_path_factory) -> idm.MeshCA:
    return idm.init_mesh(tmp_path_factory.mktemp("other-mesh"))


@pytest.fixture(scope="module")
def alpha(tmp_path_factory, mesh) -> idm.NodeIdentity:
    return idm.init_node(tmp_path_factory.mktemp("alpha"), mesh, "alpha")


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _write_key(p: Path, data: bytes) -> None:
    """A key file as an operator would copy one in: owner-only (a wider mode is refused before parsing)."""
    p.write_bytes(data)
    p.chmod(0o600)


# ---------------------------------------------------------------------------------------- mesh CA


def test_mesh_ca_material(mesh: idm.MeshCA) -> None:
    assert mesh.key_path is not None and mesh.cert_path is not None
    assert _mode(mesh.key_path) == 0o600
    assert mesh.mesh_id == hashlib.sha256(mesh.public_key_bytes).digest()
    assert mesh.mesh_id_short == mesh.mesh_id.hex()[:16]
    cert = mesh.cert
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"meshnode mesh {mesh.mesh_id_short}"
    assert cert.issuer == cert.subject
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and not ku.digital_signature
    assert cert.not_valid_after_utc - cert.not_valid_before_utc > dt.timedelta(days=10 * 365)
    assert _raw(cert.public_key()) == mesh.public_key_bytes


def test_load_mesh_round_trip(mesh: idm.MeshCA) -> None:
    again = idm.load_mesh(mesh.key_path.parent)
    assert again.mesh_id == mesh.mesh_id and again.cert_pem == mesh.cert_pem


def test_init_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    first = idm.init_mesh(tmp_path)
    before = (tmp_path / "ca.key").read_bytes()
    with pytest.raises(IdentityError) as e:
        idm.init_mesh(tmp_path)
    assert e.value.reason is R.EXISTS and "ca.key" in str(e.value)
    assert (tmp_path / "ca.key").read_bytes() == before
    second = idm.init_mesh(tmp_path, force=True)
    assert second.mesh_id != first.mesh_id
    assert idm.load_mesh(tmp_path).mesh_id == second.mesh_id
    assert _mode(tmp_path / "ca.key") == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "ca.key"]  # no temp files left


def test_key_mode_does_not_depend_on_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        mesh = idm.init_mesh(tmp_path / "m")
        node = idm.init_node(tmp_path / "n", mesh, "n1")
    finally:
        os.umask(old)
    assert _mode(mesh.key_path) == 0o600
    assert _mode(node.key_path) == 0o600
    assert _mode(node.cert_path) == 0o644


# ------------------------------------------------------------------------------------------ nodes


def test_node_material(alpha: idm.NodeIdentity, mesh: idm.MeshCA) -> None:
    assert alpha.name == "alpha"
    assert alpha.node_id == hashlib.sha256(alpha.public_key_bytes).digest()
    assert alpha.node_id_hex == alpha.node_id.hex()
    assert alpha.mesh_id == mesh.mesh_id and alpha.mesh_id_short == mesh.mesh_id_short
    assert alpha.ca_cert_pem == mesh.cert_pem
    assert alpha.key_path is not None and _mode(alpha.key_path) == 0o600
    assert (alpha.key_path.parent / "ca.crt").read_bytes() == mesh.cert_pem
    cert = alpha.cert
    assert cert.issuer == mesh.cert.subject
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alpha"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"meshnode://node/{alpha.node_id_hex}"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    span = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=365) <= span <= dt.timedelta(days=365, minutes=10)
    assert alpha.not_after == cert.not_valid_after_utc


def test_node_validity_is_configurable(tmp_path: Path, mesh: idm.MeshCA) -> None:
    node = idm.init_node(tmp_path, mesh, "short-lived", validity=dt.timedelta(days=7))
    span = node.cert.not_valid_after_utc - node.cert.not_valid_before_utc
    assert dt.timedelta(days=7) <= span <= dt.timedelta(days=7, minutes=10)


def test_load_node_round_trip(alpha: idm.NodeIdentity) -> None:
    again = idm.load_node_dir(alpha.key_path.parent)
    assert again.node_id == alpha.node_id and again.name == "alpha" and again.mesh_id == alpha.mesh_id
    assert again.cert_pem == alpha.cert_pem


def test_identities_are_frozen(alpha: idm.NodeIdentity) -> None:
    with pytest.raises(AttributeError):
        alpha.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize("name", ["", "-x", "has space", "a" * 65, "naïve", "a/b"])
def test_bad_node_names_refused(tmp_path: Path, mesh: idm.MeshCA, name: str) -> None:
    with pytest.raises(IdentityError) as e:
        idm.init_node(tmp_path, mesh, name)
    assert e.value.reason is R.BAD_NAME
    assert not any(tmp_path.iterdir())  # nothing written


def test_node_init_refuses_to_overwrite(tmp_path: Path, mesh: idm.MeshCA) -> None:
    first = idm.init_node(tmp_path, mesh, "n1")
    with pytest.raises(IdentityError) as e:
        idm.init_node(tmp_path, mesh, "n1")
    assert e.value.reason is R.EXISTS
    assert idm.load_node_dir(tmp_path).node_id == first.node_id
    assert idm.init_node(tmp_path, mesh, "n1", force=True).node_id != first.node_id


# ---------------------------------------------------------------------------- load-time errors


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(IdentityError) as e:
        idm.load_mesh(tmp_path)
    assert e.value.reason is R.MISSING and "ca.key" in str(e.value)
    with pytest.raises(IdentityError) as e:
        idm.load_node_dir(tmp_path)
    assert e.value.reason is R.MISSING and "node.key" in str(e.value)


def test_corrupt_files(tmp_path: Path, alpha: idm.NodeIdentity) -> None:
    d = tmp_path / "n"
    d.mkdir()
    for f in ("node.crt", "ca.crt"):
        (d / f).write_bytes((alpha.key_path.parent / f).read_bytes())
    _write_key(d / "node.key", b"-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n")
    with pytest.raises(IdentityError) as e:
        idm.load_node_dir(d)
    assert e.value.reason is R.CORRUPT and "node.key" in str(e.value)

    ec_key = ec.generate_private_key(ec.SECP256R1())
    _write_key(d / "node.key", ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(IdentityError) as e:
        idm.load_node_dir(d)
    assert e.value.reason is R.CORRUPT and "Ed25519" in str(e.value)

    _write_key(d / "node.key", alpha.key_path.read_bytes())
    (d / "node.crt").write_text("garbage")
    with pytest.raises(IdentityError) as e:
        idm.load_node_dir(d)
    assert e.value.reason is R.CORRUPT and "node.crt" in str(e.value)


def test_key_that_does_not_match_certificate(tmp_path: Path, mesh: idm.MeshCA, alpha: idm.NodeIdentity) -> None:
    other = idm.init_node(tmp_path, mesh, "beta")
    with pytest.raises(IdentityError) as e:
        idm.load_node_identity(other.key_path, alpha.cert_path, alpha.ca_cert_path)
    assert e.value.reason is R.KEY_MISMATCH


def test_node_cert_of_another_mesh_refused_at_load(tmp_path: Path, other_mesh: idm.MeshCA,
                                                   alpha: idm.NodeIdentity) -> None:
    stranger = idm.init_node(tmp_path, other_mesh, "stranger")
    with pytest.raises(IdentityError) as e:
        idm.load_node_identity(stranger.key_path, stranger.cert_path, alpha.ca_cert_path)
    assert e.value.reason is R.OTHER_MESH


# ----------------------------------------------------------------------------- peer verification


def test_verify_peer_accepts_a_member(mesh: idm.MeshCA, alpha: idm.NodeIdentity) -> None:
    for anchor in (mesh, alpha, mesh.cert):
        info = idm.verify_peer_certificate(alpha.cert_der, anchor, now=time.time())
        assert info.node_id == alpha.node_id and info.name == "alpha"
        assert info.public_key_bytes == alpha.public_key_bytes
        assert info.not_after == alpha.not_after


def test_verify_peer_refuses_another_mesh(tmp_path: Path, other_mesh: idm.MeshCA, alpha: idm.NodeIdentity) -> None:
    stranger = idm.init_node(tmp_path, other_mesh, "stranger")
    with pytest.raises(IdentityError) as e:
        idm.verify_peer_certificate(stranger.cert_der, alpha, now=time.time())
    assert e.value.reason is R.OTHER_MESH and "another mesh" in str(e.value)


def test_verify_peer_checks_the_clock(tmp_path: Path, mesh: idm.MeshCA, alpha: idm.NodeIdentity) -> None:
    issued = dt.datetime(2030, 1, 1, tzinfo=UTC)
    node = idm.init_node(tmp_path, mesh, "dated", validity=dt.timedelta(days=1), now=issued)
    ok = idm.verify_peer_certificate(node.cert_der, alpha, now=issued + dt.timedelta(hours=12))
    assert ok.name == "dated"
    assert idm.verify_peer_certificate(node.cert_der, alpha, now=issued.timestamp()).name == "dated"
    with pytest.raises(IdentityError) as e:
        idm.verify_peer_certificate(node.cert_der, alpha, now=issued + dt.timedelta(days=2))
    assert e.value.reason is R.EXPIRED and "expired" in str(e.value)
    with pytest.raises(IdentityError) as e:
        idm.verify_peer_certificate(node.cert_der, alpha, now=issued - dt.timedelta(days=1))
    assert e.value.reason is R.NOT_YET_VALID


def _forge(ca_key: Ed25519PrivateKey, issuer: x509.Name, subject_key: Ed25519PrivateKey, uri_id: bytes) -> bytes:
    now = dt.datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mallory")]))
        .issuer_name(issuer)
        .public_key(subject_key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(f"meshnode://node/{uri_id.hex()}")]), critical=False)
        .sign(ca_key, None)
    )
    return cert.public_bytes(serialization.Encoding.DER)


def test_verify_peer_refuses_a_forged_issuer(mesh: idm.MeshCA, alpha: idm.NodeIdentity) -> None:
    # Same issuer name as our CA, signed by some other key.
    key = Ed25519PrivateKey.generate()
    der = _forge(Ed25519PrivateKey.generate(), mesh.cert.subject, key, idm.node_id_of(key.public_key()))
    with pytest.raises(IdentityError) as e:
        idm.verify_peer_certificate(der, alpha, now=time.time())
    assert e.value.reason is R.FORGED and "signature" in str(e.value)


def test_verify_peer_refuses_a_node_id_that_is_not_its_key(mesh: idm.MeshCA, alpha: idm.NodeIdentity) -> None:
    # Properly signed, but the SAN claims alpha's node id for a different key.
    der = _forge(mesh.private_key, mesh.cert.subject, Ed25519PrivateKey.generate(), alpha.node_id)
    with pytest.raises(IdentityError) as e:
        idm.verify_peer_certificate(der, alpha, now=time.time())
    assert e.value.reason is R.FORGED and "node id" in str(e.value)


def test_verify_peer_refuses_garbage_and_the_ca_itself(mesh: idm.MeshCA, alpha: idm.NodeIdentity) -> None:
    for der in (b"", b"\x30\x03\x02\x01\x00", os.urandom(200)):
        with pytest.raises(IdentityError) as e:
            idm.verify_peer_certificate(der, alpha, now=time.time())
        assert e.value.reason is R.BAD_CERTIFICATE
    with pytest.raises(IdentityError) as e:
        idm.verify_peer_certificate(mesh.cert.public_bytes(serialization.Encoding.DER), alpha, now=time.time())
    assert e.value.reason is R.BAD_CERTIFICATE


# ------------------------------------------------------------------ names a peer chooses (issue 16)

HOSTILE_NAMES = ["b\n2025-01-01 00:00:00 INFO    meshnode.node: peer x up", "b[red]x[/red]", "[link=http://x]b",
                 "b\x1b[31m", "b\u202e", "b\u200b", "b\r", "b\t", "b ", "b\x00", "b\\n"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_are_not_issued(tmp_path: Path, mesh: idm.MeshCA, name: str) -> None:
    assert not idm.is_valid_node_name(name)
    with pytest.raises(IdentityError) as e:
        idm.issue_node_certificate(mesh, Ed25519PrivateKey.generate().public_key(), name)
    msg = str(e.value)
    assert e.value.reason is R.BAD_NAME and idm.NODE_NAME_RULE in msg
    assert msg.isprintable(), msg   # the name is quoted escaped: no control character reaches the message
    with pytest.raises(IdentityError):
        idm.init_node(tmp_path, mesh, name)
    assert not any(tmp_path.iterdir())


def test_the_name_grammar() -> None:
    for good in ("a", "A0", "gpu-box_1.lab", "x" * 64, "0"):
        assert idm.is_valid_node_name(good) and idm.validate_node_name(good) == good
    for bad in ("", "x" * 65, "-a", ".a", "_a", "a/b", "naïve", "a\n", "\na", None, 3, b"a"):
        assert not idm.is_valid_node_name(bad)


def _signed_by_ca(ca: idm.MeshCA, cn: list[str]) -> bytes:
    """A certificate our CA really signed, as a tool other than meshnode might: any subject it was given."""
    key = Ed25519PrivateKey.generate()
    node_id = idm.node_id_of(key.public_key())
    now = dt.datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, c) for c in cn]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(f"meshnode://node/{node_id.hex()}")]), critical=False)
        .sign(ca.private_key, None)
    )
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("name", HOSTILE_NAMES[:6])
def test_a_received_certificate_with_a_hostile_name_is_refused(mesh: idm.MeshCA, alpha: idm.NodeIdentity,
                                                               name: str) -> None:
    # Signed by our own CA: the name is the only thing wrong with it.
    assert idm.verify_peer_certificate(_signed_by_ca(mesh, ["fine-name"]), alpha, now=time.time()).name == "fine-name"
    with pytest.raises(IdentityError) as e:
        idm.verify_peer_certificate(_signed_by_ca(mesh, [name]), alpha, now=time.time())
    msg = str(e.value)
    assert e.value.reason is R.BAD_CERTIFICATE and "not a node name" in msg
    assert msg.isprintable(), msg   # the refusal itself may be logged: the name in it is escaped


def test_a_received_certificate_needs_exactly_one_name(mesh: idm.MeshCA, alpha: idm.NodeIdentity) -> None:
    for cns in ([], ["a", "b"]):
        with pytest.raises(IdentityError) as e:
            idm.verify_peer_certificate(_signed_by_ca(mesh, cns), alpha, now=time.time())
        assert e.value.reason is R.BAD_CERTIFICATE and "common name" in str(e.value)


def test_a_hello_may_only_claim_its_certificate_name() -> None:
    assert idm.check_claimed_name("b", "b") == "b"
    for claimed in ("c", "b\nfake line", "b\x1b[2J", "", None):
        with pytest.raises(IdentityError) as e:
            idm.check_claimed_name(claimed, "b")
        assert e.value.reason is R.BAD_NAME and str(e.value).isprintable()


# ---------------------------------------------------------------- key file modes (issue 16, item 10)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666, 0o601])
def test_a_private_key_others_may_access_is_refused(tmp_path: Path, mesh: idm.MeshCA, mode: int) -> None:
    node = idm.init_node(tmp_path / "n", mesh, "n1")
    node.key_path.chmod(mode)
    with pytest.raises(IdentityError) as e:
        idm.load_node_dir(tmp_path / "n")
    msg = str(e.value)
    assert e.value.reason is R.BAD_MODE
    assert msg == (f"{node.key_path}: private key is accessible by group or others (mode {mode:04o}); "
                   f"run `chmod 600 {node.key_path}` (a key others can read is not secret)")


def test_owner_only_keys_load(tmp_path: Path, mesh: idm.MeshCA) -> None:
    node = idm.init_node(tmp_path / "n", mesh, "n1")
    for mode in (0o600, 0o400, 0o700):
        node.key_path.chmod(mode)
        assert idm.load_node_dir(tmp_path / "n").node_id == node.node_id
    node.cert_path.chmod(0o644)   # certificates are public: any mode
    assert idm.load_node_dir(tmp_path / "n").node_id == node.node_id


def test_the_ca_key_is_held_to_the_same_rule(tmp_path: Path) -> None:
    ca = idm.init_mesh(tmp_path / "m")
    ca.key_path.chmod(0o644)
    with pytest.raises(IdentityError) as e:
        idm.load_mesh(tmp_path / "m")
    assert e.value.reason is R.BAD_MODE and f"chmod 600 {ca.key_path}" in str(e.value)


def test_everything_meshnode_writes_keeps_keys_owner_only(tmp_path: Path) -> None:
    # node init, the simulator's identities and the demo's mesh all go through init_mesh / init_node;
    # a key they write must load under the stricter rule whatever the umask.
    from meshnode.sim.identities import simulated_mesh

    old = os.umask(0o002)
    try:
        ids = simulated_mesh(tmp_path / "sim", ["a", "b"], seed=3)
    finally:
        os.umask(old)
    for ident in ids.values():
        assert _mode(ident.key_path) == 0o600
        assert idm.load_node_identity(ident.key_path, ident.cert_path, ident.ca_cert_path).name == ident.name
    assert _mode(tmp_path / "sim" / "mesh" / "ca.key") == 0o600


# ------------------------------------------------------------------------------ through the CLI


def _cli(*args: str):
    from click.testing import CliRunner

    from meshnode.cli import main

    return CliRunner().invoke(main, list(args))


def test_cli_refuses_a_hostile_name_and_a_readable_key_with_one_line_and_exit_2(tmp_path: Path) -> None:
    assert _cli("mesh", "init", str(tmp_path / "mesh")).exit_code == 0
    r = _cli("node", "init", str(tmp_path / "evil"), "--mesh", str(tmp_path / "mesh"), "--name", "b\n[red]x")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "must be 1-64 characters" in r.output and not (tmp_path / "evil").exists()

    r = _cli("node", "init", str(tmp_path / "a"), "--mesh", str(tmp_path / "mesh"), "--name", "a",
             "--listen-host", "127.0.0.1", "--no-mdns")
    assert r.exit_code == 0, r.output
    key = tmp_path / "a" / "node.key"
    assert _mode(key) == 0o600
    key.chmod(0o644)
    for command in ("run", "check"):
        r = _cli(command, "--config", str(tmp_path / "a" / "node.toml"))
        lines = r.output.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1, r.output
        assert lines[0] == (f"error: {key}: private key is accessible by group or others (mode 0644); "
                            f"run `chmod 600 {key}` (a key others can read is not secret)")
    (tmp_path / "mesh" / "ca.key").chmod(0o640)
    r = _cli("node", "init", str(tmp_path / "b"), "--mesh", str(tmp_path / "mesh"), "--name", "b")
    assert r.exit_code == 2 and "chmod 600" in r.output and "ca.key" in r.output


def test_a_certificate_for_a_small_order_key_is_refused(tmp_path):
    """SPEC §2: a small-order key verifies forged signatures (R = identity, S = 0), so even a
    certificate our own CA issued for one proves nothing; it is refused where certificates are read."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    ca = idm.init_mesh(tmp_path / "ca")
    identity_point = Ed25519PublicKey.from_public_bytes(bytes([1]) + bytes(31))   # the neutral element
    with pytest.raises(ValueError):          # never issued ...
        idm.issue_node_certificate(ca, identity_point, "zero")
    cert = idm.issue_node_certificate(ca, identity_point, "zero", unsafe_key=True)   # ... and if it were
    der = cert.public_bytes(serialization.Encoding.DER) if hasattr(cert, "public_bytes") else cert
    with pytest.raises(idm.IdentityError) as e:
        idm.verify_peer_certificate(der, ca, now=time.time())
    assert e.value.reason is idm.IdentityReason.BAD_CERTIFICATE and "small" in str(e.value).lower()
