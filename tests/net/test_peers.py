"""MemberDirectory: held hellos are recognised before any signature or certificate work and change
nothing; oversized hellos are refused; relayed churn is bounded; members are forgotten after member_ttl
unseen or when their certificate expires."""

from __future__ import annotations

import datetime as dt

import pytest

from meshnode import identity as idm
from meshnode.net import peers
from meshnode.net.peers import MemberDirectory, MemberRefused
from meshnode.wire.packet import Hello, Signer, decode_packet, encode_packet
from meshnode.wire.session import Session

NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def ids(tmp_path_factory):
    now = dt.datetime.fromtimestamp(NOW, tz=dt.timezone.utc)
    ca = idm.init_mesh(tmp_path_factory.mktemp("m"), now=now)
    return {n: idm.init_node(tmp_path_factory.mktemp(n), ca, n, now=now) for n in ("a", "b", "c")}


def hello(identity, *, ts: float = NOW, topics: tuple[str, ...] = ("t",), sign: bool = True):
    signer = Signer(identity.private_key)
    raw = encode_packet(Hello(name=identity.name, public_key=signer.public_key_bytes, topics=topics,
                              cert=identity.cert_der), signer, timestamp_us=int(ts * 1e6))
    if not sign:
        raw = raw[:-64] + bytes(64)              # a forged signature, same header and body
    return decode_packet(raw)


class Clock:
    def __init__(self) -> None:
        self.t = NOW

    def __call__(self) -> float:
        return self.t


def test_a_held_hello_is_recognised_before_any_certificate_work_and_changes_nothing(ids, monkeypatch) -> None:
    clock = Clock()
    d = MemberDirectory(ids["a"], now=clock)
    first = hello(ids["b"])
    member = d.learn(first, via=b"p" * 32)
    assert member is not None
    checks = []
    monkeypatch.setattr(peers, "verify_peer_certificate", lambda *a, **k: checks.append(a))
    # the same hello, an older one, and a newer stamp of the same body (another link of b), even with a
    # forged signature: held, no certificate work, the held member is untouched
    for p in (first, hello(ids["b"], ts=NOW - 5), hello(ids["b"], ts=NOW + 5, sign=False)):
        assert d.held(p, via=b"q" * 32) and d.learn(p, relayed=True) is None
    assert checks == [] and d.get(ids["b"].node_id) is member
    assert d.holds(b"p" * 32, ids["b"].node_id) and d.holds(b"q" * 32, ids["b"].node_id)
    # the session asks the directory before verifying: no Ed25519 work for a held announcement
    verified = []
    import meshnode.wire.session as ws
    monkeypatch.setattr(ws, "verify_packet", lambda *a: verified.append(a))
    s = Session(Signer.from_seed(bytes(32)), Hello(name="x", public_key=Signer.from_seed(bytes(32)).public_key_bytes),
                hello_held=d.held)
    s.state, s.peer_node_id = ws.State.OPEN, b"r" * 32
    assert s.receive_data(ws.encode_frame(hello(ids["b"], ts=NOW + 9, sign=False).raw), 1.0) == []
    assert verified == [] and s.announcements_held == 1
    # a newer hello with another body is news (and needs its certificate checked)
    monkeypatch.undo()
    clock.t += 60
    assert d.learn(hello(ids["b"], ts=NOW + 60, topics=("t", "u")), relayed=True) is not None


def test_oversized_hellos_are_refused(ids) -> None:
    d = MemberDirectory(ids["a"], now=Clock(), max_hello=2000)
    with pytest.raises(MemberRefused) as e:
        d.learn(hello(ids["b"], topics=tuple(f"{i}".ljust(200, "t") for i in range(20))))
    assert e.value.reason == "hello_too_large" and len(d) == 0


def test_relayed_churn_is_refused_and_a_peers_own_change_is_not_news(ids) -> None:
    clock = Clock()
    d = MemberDirectory(ids["a"], now=clock)
    assert d.learn(hello(ids["b"])) is not None
    with pytest.raises(MemberRefused) as e:
        d.learn(hello(ids["b"], ts=NOW + 1, topics=("x",)), relayed=True)
    assert e.value.reason == "hello_churn"
    assert d.learn(hello(ids["b"], ts=NOW + 2, topics=("y",))) is None       # direct: stored, not relayed
    assert d.get(ids["b"].node_id).hello_body == hello(ids["b"], ts=NOW + 2, topics=("y",)).raw[72:-64]
    clock.t += peers.MIN_UPDATE_INTERVAL
    assert d.learn(hello(ids["b"], ts=NOW + 20, topics=("z",)), relayed=True) is not None


def test_members_are_forgotten_after_the_ttl_unless_linked_or_seen_and_when_their_certificate_expires(ids) -> None:
    clock = Clock()
    d = MemberDirectory(ids["a"], now=clock, member_ttl=100.0)
    for n in ("b", "c"):
        d.learn(hello(ids[n]))
    clock.t += 60
    d.seen(ids["b"].node_id)                          # a verified packet of b
    clock.t += 60
    assert [m.name for m in d.expire(linked=())] == ["c"] and ids["b"].node_id in d
    d.learn(hello(ids["c"], ts=clock.t))
    clock.t += 1000
    assert [m.name for m in d.expire(linked={ids["c"].node_id})] == ["b"]    # c is linked: alive
    clock.t = d.get(ids["c"].node_id).not_after.timestamp() + 1
    assert [m.name for m in d.expire(linked={ids["c"].node_id})] == ["c"]    # expired certificate
    assert len(d) == 0 and d.forgotten == 3
