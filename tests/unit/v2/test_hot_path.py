"""The responder's hot-path shortcuts keep their contracts: the ChildSa deadline hook, the codec caches,
prf+ through HKDF-Expand and the keyed prf."""

from __future__ import annotations

import pytest

from ike.policy import DataManagementPolicy, EspProposal, Phase2Tunnel, TrafficSelector
from ike.proto.crypto import KeyedPrf, hmac_digest, prf, prf_plus
from ike.proto.transforms import PRF
from ike.proto.v2.keys import ChildKeys
from ike.proto.v2.payloads.base import TSI, TSR, DecodeError
from ike.proto.v2.payloads.sa import ENCR, ESN, PROTO_ESP, Proposal, SaPayload, Transform
from ike.proto.v2.payloads.ts import TsiPayload, TsPayload, TsrPayload
from ike.proto.v2.state import ChildSa, ChildState


def _child() -> ChildSa:
    ts = TrafficSelector.subnet("10.0.0.0/24")
    p2 = Phase2Tunnel(
        1, "net", 1, ts, ts, DataManagementPolicy("dm", proposals=(EspProposal("aes-gcm-16", 128, None),))
    )
    return ChildSa(
        child_id=1,
        phase2=p2,
        proposal=p2.policy.proposals[0],
        protocol="esp",
        mode="tunnel",
        spi_in=b"\x00\x00\x01\x00",
        spi_out=b"\x00\x00\x02\x00",
        keys=ChildKeys(b"", b"", b"", b""),
        we_initiated=False,
        local_ts=(ts,),
        remote_ts=(ts,),
        pfs_group=0,
        created=0.0,
        rekey_at=10.0,
        expire_at=20.0,
        nonces=(b"n", b"n"),
    )


def test_child_deadline_fields_tell_the_watcher() -> None:
    c = _child()
    assert (c.rekey_at, c.expire_at, c.state) == (10.0, 20.0, ChildState.INSTALLED)
    seen: list[tuple[float | None, float, ChildState]] = []

    def told(ch: ChildSa) -> None:
        seen.append((ch.rekey_at, ch.expire_at, ch.state))

    c.watcher = lambda: told
    c.rekey_at = None
    c.expire_at = 30.0
    c.set_state(ChildState.DELETING)
    c.mode = "transport"  # not a deadline field: no call
    assert seen == [
        (None, 20.0, ChildState.INSTALLED),
        (None, 30.0, ChildState.INSTALLED),
        (None, 30.0, ChildState.DELETING),
    ]
    assert (c.rekey_at, c.expire_at, c.state, c.mode) == (None, 30.0, ChildState.DELETING, "transport")


def test_ts_decode_cache_gives_fresh_lists_and_still_rejects() -> None:
    sel = [TrafficSelector.subnet("10.0.0.0/24"), TrafficSelector.host("10.0.1.1", 6, 80)]
    body = TsiPayload(selectors=sel).encode_body()
    a, b = TsPayload.decode_body(body, TSI), TsPayload.decode_body(body, TSR)
    assert type(a) is TsiPayload and type(b) is TsrPayload
    assert a.selectors == b.selectors == sel and a.selectors is not b.selectors
    a.selectors.append(sel[0])
    assert TsPayload.decode_body(body, TSI).selectors == sel
    for _ in range(2):  # a rejected body is rejected every time (errors are not cached)
        with pytest.raises(DecodeError, match="reversed"):
            TsPayload.decode_body(body[:12] + body[16:20] + body[12:16] + body[20:], TSI)


def test_sa_transform_cache_gives_fresh_lists() -> None:
    ts = [Transform(ENCR, 20, 128), Transform(ESN, 0)]
    sa = SaPayload(proposals=[Proposal(1, PROTO_ESP, b"\x00\x00\x01\x00", list(ts))])
    body = sa.encode_body()
    first, second = SaPayload.decode_body(body, 33), SaPayload.decode_body(body, 33)
    assert first == second == sa
    assert first.proposals[0].transforms is not second.proposals[0].transforms
    first.proposals[0].transforms.clear()
    assert SaPayload.decode_body(body, 33) == sa
    assert SaPayload(proposals=[Proposal(1, PROTO_ESP, b"\x00\x00\x01\x00", ts[:1])]).encode_body() != body


@pytest.mark.parametrize("name", sorted(PRF))
def test_prf_plus_is_the_rfc_7296_definition_at_every_length(name: str) -> None:
    key, seed = bytes(range(1, 40)), b"Ni | Nr | SPIi | SPIr" * 3
    out, t, i = b"", b"", 1
    while len(out) < 700:
        t = hmac_digest(PRF[name].hash, key, t + seed + bytes([i]))
        out, i = out + t, i + 1
    for length in (0, 1, 19, 20, 32, 40, 63, 64, 65, 136, 700):
        assert prf_plus(name, key, seed, length) == out[:length]
    assert prf_plus(name, b"", seed, 40) == prf_plus(name, bytes(PRF[name].out_len), seed, 40)
    with pytest.raises(ValueError, match="prf\\+ cannot produce"):
        prf_plus(name, key, seed, 255 * PRF[name].out_len + 1)


@pytest.mark.parametrize("name", sorted(PRF))
def test_keyed_prf_is_prf(name: str) -> None:
    once = KeyedPrf(name, b"secret")
    for data in (b"", b"x", b"y" * 300):
        assert once(data) == prf(name, b"secret", data)
