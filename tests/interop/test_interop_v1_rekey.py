"""IKEv1 renewals against charon that used to break:

- Phase 1 renewal: our Delete for the old ISAKMP SA went out right behind AM3; charon handled it
  before it moved the quick mode SA to the new ISAKMP SA and deleted that SA, and the tunnel stopped
  (3 runs in 5). The Delete now follows after a grace period, in both modes.
- Quick mode renewals: QM3 went out twice; with the rekey's Delete behind it charon sometimes got
  the copy late, could not decrypt it ("processing failed") and answered PAYLOAD_MALFORMED.
"""

from __future__ import annotations

import re
import subprocess

import pytest
from interop_pair import SUITES, interop_pair, prerequisites, wait_for

SUITE = SUITES[(1, "cbc128-sha256-ecp256+gcm128")]


def _received(ping: subprocess.CompletedProcess[str]) -> tuple[int, int]:
    m = re.search(r"(\d+) packets transmitted, (\d+) received", ping.stdout)
    assert m, ping.stdout
    return int(m.group(1)), int(m.group(2))


# Aggressive mode lost the tunnel in about half of the renewals: four of them make a miss unlikely.
@pytest.mark.parametrize(("mode", "seconds"), [("aggressive", 45), ("main", 25)])
def test_phase1_renewal_keeps_the_tunnel(mode: str, seconds: int) -> None:
    prerequisites()
    with interop_pair() as pair:
        # 12 s phase 1: we renew it about every 10.5 s; charon never does (rekey_time = 0).
        t = pair.tunnel(version=1, mode=mode, ike_lifetime_s=12, esp_lifetime_s=300, **SUITE)
        pair.configure(
            t,
            options={"rekey_time": "0", "reauth_time": "0"},
            child_options={"rekey_time": "300s", "life_time": "330s", "rand_time": "0"},
        )
        _, child = pair.establish("ours", 1)
        first_ike = pair.peer.list_sas("ike")[0].initiator_spi
        # phase 1 renewals while traffic flows
        ping = pair.a.ping(pair.b.inner4, count=seconds * 10, src=pair.a.inner4, interval=0.1, timeout=seconds + 30)
        sent, got = _received(ping)
        assert got >= sent - 3, f"{sent - got} of {sent} pings lost\n{pair.peer.log(80)}\n{pair.ours.log(40)}"
        sas = pair.peer.list_sas("ike")
        assert len(sas) == 1 and sas[0].initiator_spi != first_ike, sas  # renewed, the old one deleted
        now = sas[0].child("net")
        assert now is not None and now.spi_in == child.spi_in, now  # the same phase 2 SA carried on
        log = pair.peer.log(3000)
        assert not re.search(r"deleting CHILD_SA|closing CHILD_SA", log), log


def test_quick_mode_renewals_are_clean() -> None:
    prerequisites()
    with interop_pair() as pair:
        # 6 s phase 2: we renew it about every 5 s, each time QM1-3 and the old SA's Delete.
        t = pair.tunnel(version=1, esp_lifetime_s=6, **SUITE)
        pair.configure(t, child_options={"rekey_time": "60s", "life_time": "70s", "rand_time": "0"})
        _, first = pair.establish("ours", 1)
        ping = pair.a.ping(pair.b.inner4, count=130, src=pair.a.inner4, interval=0.1, timeout=40)
        sent, got = _received(ping)
        log = pair.peer.log(3000)
        assert not re.search(r"processing failed|PAYLOAD_MALFORMED|decryption failed|retransmit", log), log
        assert "PAYLOAD_MALFORMED" not in pair.ours.log(400)
        assert got >= sent - 3, f"{sent - got} of {sent} pings lost\n{log[-4000:]}"
        child = wait_for(lambda: pair.peer.list_sas("ike")[0].child("net"), 5, lambda: log)
        assert child.spi_in != first.spi_in  # renewed at least once
