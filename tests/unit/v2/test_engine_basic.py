from __future__ import annotations

from ike.proto.api import ChildSaEstablished, IkeSaEstablished, NegotiationFailed
from ike.proto.static_policies import StaticPolicies

from .harness import Net, mirror1, mirror2, phase1, phase2


def test_psk_gcm_curve25519() -> None:
    p1, p2 = phase1(), phase2()
    net = Net(p1, [p2], StaticPolicies([p1], [p2]), StaticPolicies([mirror1(p1)], [mirror2(p2)]))
    net.pump()
    print(net.i.events, net.r.events)
    assert net.i.of(IkeSaEstablished) and net.r.of(IkeSaEstablished)
    ci, cr = net.i.of(ChildSaEstablished)[0], net.r.of(ChildSaEstablished)[0]
    assert ci.outbound == cr.inbound and ci.inbound == cr.outbound
    assert not net.i.of(NegotiationFailed)
