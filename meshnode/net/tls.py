"""TLS 1.3 contexts for links between nodes of one mesh (standard library `ssl`, nothing hand-rolled).

Both ends present their node certificate and require the other's; the mesh CA is the only trust
anchor. Host names are not checked: peers are found by address (mDNS, static list) and identified by
the node id in their certificate. After the handshake the caller runs `peer_info` (or
`identity.verify_peer_certificate` on `ssl_object.getpeercert(binary_form=True)`) to learn, and
check, which node it is talking to.
"""

from __future__ import annotations

import datetime as _dt
import ssl

from ..identity import IdentityError, IdentityReason, NodeIdentity, PeerInfo, verify_peer_certificate

__all__ = ["HANDSHAKE_TIMEOUT", "SILENT_TIMEOUT", "client_context", "peer_info", "server_context"]

# Passed as ssl_handshake_timeout to asyncio: a stalled or silent dialer must not hold a slot for the
# asyncio default of 60 s.
HANDSHAKE_TIMEOUT = 10.0
# A real client sends its ClientHello as soon as TCP connects; a connection that has sent nothing for
# this long is a slot-holder (or a port scanner), not a node on a slow link, and is closed well before
# HANDSHAKE_TIMEOUT so that silent floods turn their slots over three times faster.
SILENT_TIMEOUT = 3.0


def _context(identity: NodeIdentity, purpose: int) -> ssl.SSLContext:
    if identity.cert_path is None or identity.key_path is None:
        raise ValueError("TLS needs an identity loaded from files (ssl loads cert and key by path)")
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # must precede CERT_REQUIRED on a client context; see module doc
    ctx.verify_mode = ssl.CERT_REQUIRED
    # Strict RFC 5280 checks: our own certificates satisfy them, so anything that fails is not ours.
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    # The mesh CA only: no system trust store is ever loaded into these contexts.
    ctx.load_verify_locations(cadata=identity.ca_cert_pem.decode("ascii"))
    ctx.load_cert_chain(certfile=str(identity.cert_path), keyfile=str(identity.key_path))
    return ctx


def server_context(identity: NodeIdentity) -> ssl.SSLContext:
    """Context for accepting peers: TLS 1.3 only, client certificate required, mesh CA only."""
    ctx = _context(identity, ssl.PROTOCOL_TLS_SERVER)
    # No session tickets: links are long-lived, and resumption would skip the client certificate.
    ctx.num_tickets = 0
    return ctx


def client_context(identity: NodeIdentity) -> ssl.SSLContext:
    """Context for dialling peers: TLS 1.3 only, server certificate required, mesh CA only."""
    return _context(identity, ssl.PROTOCOL_TLS_CLIENT)


def peer_info(
    ssl_object: ssl.SSLObject | ssl.SSLSocket | None,
    identity: NodeIdentity,
    *,
    now: _dt.datetime | float,
) -> PeerInfo:
    """The verified peer behind a completed handshake (asyncio: writer.get_extra_info("ssl_object"))."""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise IdentityError(IdentityReason.BAD_CERTIFICATE, "peer presented no certificate")
    return verify_peer_certificate(der, identity, now=now)
