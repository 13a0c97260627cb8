"""Messages nothing answers (MM6, AM3, QM3) go out once; a lost one is resent when the peer
retransmits the message it answered (charon failed to decrypt a late duplicate QM3)."""

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
    assert seen.count(final) == 2, "the final message should go out once, and once more on the retransmission"
    assert len(p.events("a", IkeSaEstablished)) == 1 and len(p.events("b", IkeSaEstablished)) == 1
    assert len(p.events("a", ChildSaEstablished)) == 1 and len(p.events("b", ChildSaEstablished)) == 1
