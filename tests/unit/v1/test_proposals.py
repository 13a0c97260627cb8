"""Proposal encoding and choice: local order wins, several proposal shapes from peers, lifetimes as
TV or TLV, unknown transforms described rather than fatal, bundles refused, AH."""

from __future__ import annotations

from ike.policy import AuthMethod, EspProposal, IkeProposal
from ike.proto.v1.payloads import Attr, SaPayload
from ike.proto.v1.payloads.sa import PROTO_AH, PROTO_ESP, PROTO_ISAKMP, Proposal, Transform
from ike.proto.v1.proposals import (
    ENCAP_UDP_TUNNEL_DRAFT,
    decode_phase1_transform,
    decode_phase2_transform,
    phase1_transform,
    phase2_sa,
    phase2_transform,
    select_phase1,
    select_phase2,
)

X = IkeProposal("aes-cbc", 128, "hmac-sha1-96", "hmac-sha1", 14)
Y = IkeProposal("aes-cbc", 256, "hmac-sha2-256-128", "hmac-sha2-256", 19)
Z = IkeProposal("aes-cbc", 192, "hmac-sha2-512-256", "hmac-sha2-512", 31)


def test_phase1_roundtrip_and_lifetime_forms() -> None:
    t = phase1_transform(1, Y, 1, 100000, 5000)  # seconds > 16 bits: TLV
    assert decode_phase1_transform(
        SaPayload.parse(SaPayload((Proposal(1, 1, b"", (t,)),)).body()).proposals[0].transforms[0]
    ) == (Y, 1, 100000, 5000)
    tv = Transform(
        1,
        1,
        (Attr(1, 7), Attr(14, 128), Attr(2, 2), Attr(3, 1), Attr(4, 14), Attr(11, 1), Attr(12, b"\x00\x00\x0e\x10")),
    )
    assert decode_phase1_transform(tv) == (X, 1, 3600, 0)


def test_local_order_wins_over_peer_order_and_proposal_shapes() -> None:
    # the peer: three proposals with one transform each, its favourite first
    peer = SaPayload(
        tuple(
            Proposal(i + 1, PROTO_ISAKMP, b"", (phase1_transform(1, p, 1, 3600, 0),)) for i, p in enumerate((X, Z, Y))
        )
    )
    choice, lines = select_phase1((Y, Z), AuthMethod.PSK, peer)
    assert choice is not None and choice.proposal == Y and len(lines) == 3
    # one proposal with three transforms
    peer2 = SaPayload(
        (
            Proposal(
                1, PROTO_ISAKMP, b"", tuple(phase1_transform(i + 1, p, 1, 3600, 0) for i, p in enumerate((X, Z, Y)))
            ),
        )
    )
    c2, _ = select_phase1((Z, X), AuthMethod.PSK, peer2)
    assert c2 is not None and c2.proposal == Z and c2.transform.number == 2
    # auth method must match too
    c3, _ = select_phase1((Z,), AuthMethod.RSA, peer2)
    assert c3 is None


def test_unknown_transforms_are_described_not_fatal() -> None:
    odd = Transform(1, 1, (Attr(1, 99), Attr(2, 2), Attr(3, 1), Attr(4, 14)))
    peer = SaPayload((Proposal(1, PROTO_ISAKMP, b"", (odd, phase1_transform(2, X, 1, 3600, 0))),))
    choice, lines = select_phase1((X,), AuthMethod.PSK, peer)
    assert choice is not None and "unsupported" in lines[0] and "encryption algorithm 99" in lines[0]


def test_phase2_choice_pfs_bundles_and_draft_encapsulation() -> None:
    e1, e2 = EspProposal("aes-cbc", 128, "hmac-sha1-96"), EspProposal("aes-gcm-16", 256, None)
    sa = phase2_sa(PROTO_ESP, b"\x01\x02\x03\x04", (e1, e2), ENCAP_UDP_TUNNEL_DRAFT, 14, 3600, 0)
    choice, _, _ = select_phase2((e2, e1), PROTO_ESP, 14, sa)
    assert choice is not None and choice.proposal == e2 and choice.peer_spi == b"\x01\x02\x03\x04"
    assert choice.encap == ENCAP_UDP_TUNNEL_DRAFT
    none, _, why = select_phase2((e2,), PROTO_ESP, 19, sa)
    assert none is None and "PFS group" in why
    # ESP+AH bundle (same proposal number twice) is described and refused
    ah = Proposal(1, PROTO_AH, b"\x05\x06\x07\x08", (phase2_transform(1, PROTO_AH, e1, 1, 0, 3600, 0),))
    bundle = SaPayload((sa.proposals[0], ah))
    none2, lines, _ = select_phase2((e1,), PROTO_ESP, 14, bundle)
    assert none2 is None and any("bundle" in x for x in lines)


def test_ah() -> None:
    p = EspProposal("aes-cbc", 128, "hmac-sha2-256-128")
    t = phase2_transform(1, PROTO_AH, p, 1, 0, 3600, 0)
    assert t.transform_id == 5
    got, encap, group, secs, _ = decode_phase2_transform(PROTO_AH, t)
    assert got.integ == "hmac-sha2-256-128" and (encap, group, secs) == (1, 0, 3600)
