"""Messages nothing answers (MM6, AM3, QM3) go out once; a lost one is resent (twice, back to back)
when the peer retransmits the message it answered (charon failed to decrypt a late duplicate QM3, so
nothing goes out twice unasked)."""

from __future__ import annotations

import pytest

from ike.proto.api import ChildSaEstablished, EngineSettings, IkeSaEstablished
from ike.proto.v1.payloads import Exchange

from .pair import Pair, basic, policies_b


def _exchange(data: bytes) -> int:
    return data[18]


@pytest.mark.parametrize("mode", ["main", "aggressive"])
def test_no_message_goes_out_twice_without_loss(mode: str) -> None:
    a1, a2, b1, b2 = basic(mode=mode)
    p = Pair(a1, [a2], policies_b(b1, b2))
    p.run()
    assert len(p.established()[0]) == 1 and len(p.children()[1]) == 1
    sent = [dg.data for _, dg in p.log]
    assert len(sent) == len(set(sent)), "a datagram was sent twice on a lossless wire"


@pytest.mark.parametrize(
    ("mode", "exchange", "nth"),
    [
        ("main", Exchange.MAIN, 3),  # MM6 (b's third main mode message)
        ("aggressive", Exchange.AGGRESSIVE, 1),  # AM3 (AM1 left before `drop` was set)
        ("main", Exchange.QUICK, 2),  # QM3 (a's second quick mode message)
    ],
)
def test_lost_final_message_is_resent_for_the_peers_retransmission(mode: str, exchange: int, nth: int) -> None:
    a1, a2, b1, b2 = basic(mode=mode)
    s = EngineSettings(retransmit_timeout_s=1.0, retransmit_tries=3)
    sender = "b" if exchange == Exchange.MAIN else "a"
    to = "a" if sender == "b" else "b"
    seen: list[bytes] = []

    def drop(i: int, dest: str, dg: object) -> bool:
        data = dg.data  # type: ignore[attr-defined]
        if dest != to or _exchange(data) != exchange:
            return False
        seen.append(data)
        return len(seen) == nth  # only the first copy of the final message

    p = Pair(a1, [a2], policies_b(b1, b2), settings=s)
    p.drop = drop
    p.run(until=p.now + 30)
    final = seen[nth - 1]
    # Once, then (the peer retransmitted: it lacks it) twice back to back, so that a loss pattern in
    # step with the peer's timer cannot take both.
    assert seen.count(final) == 3, "the final message should go out once, and twice on the retransmission"
    at = [i for i, (_, dg) in enumerate(p.log) if dg.data == final]
    assert at[2] == at[1] + 1
    assert p.log[at[1] - 1][0] != to and _exchange(p.log[at[1] - 1][1].data) == exchange  # the retransmission
    assert len(p.events("a", IkeSaEstablished)) == 1 and len(p.events("b", IkeSaEstablished)) == 1
    assert len(p.events("a", ChildSaEstablished)) == 1 and len(p.events("b", ChildSaEstablished)) == 1


def test_rekey_qm3_goes_out_again_only_for_a_retransmitted_qm2() -> None:
    """A lost QM3 of a phase 2 rekey. The QM3 goes out again only when b's QM2 retransmission
    arrives, as two adjacent copies, so nothing of ours can reach the peer between them (charon
    took a late copy after a Delete for a new exchange and answered PAYLOAD_MALFORMED). The Delete
    of the old SA waits its grace period, so b, which installs the new SA only on QM3, keeps the
    old one until it has the new one."""
    a1, a2, b1, b2 = basic()
    p = Pair(a1, [a2], policies_b(b1, b2), settings=EngineSettings(retransmit_timeout_s=1.0))
    p.run()
    (old,) = p.children()[0]
    start = len(p.log)
    qm_to_b: list[bytes] = []

    def drop(i: int, dest: str, dg: object) -> bool:
        data = dg.data  # type: ignore[attr-defined]
        if dest == "b" and _exchange(data) == Exchange.QUICK:
            qm_to_b.append(data)
            return len(qm_to_b) == 2  # the rekey's first QM3
        return False

    p.drop = drop
    p.a.rekey_child(old.child_id, p.now)
    p.collect()
    p.run(until=p.now + 10)  # before the first DPD round
    ca, cb = p.children()
    assert len(ca) == 2 and len(cb) == 2 and ca[1].inbound == cb[1].outbound and ca[1].rekey_of == old.child_id
    log = p.log[start:]
    qm3 = qm_to_b[1]
    at = [i for i, (_, dg) in enumerate(log) if dg.data == qm3]
    assert len(at) == 3 and at[2] == at[1] + 1
    to, before = log[at[1] - 1]
    qm2s = [dg.data for t, dg in log[: at[0]] if t == "a" and _exchange(dg.data) == Exchange.QUICK]
    assert to == "a" and before.data in qm2s, "resent only for b's retransmitted QM2"
    deletes = [i for i, (t, dg) in enumerate(log) if t == "b" and _exchange(dg.data) == Exchange.INFORMATIONAL]
    assert len(deletes) == 1 and deletes[0] > at[2], (deletes, at)
