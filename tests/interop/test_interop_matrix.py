"""iked against strongSwan's charon across the matrix the tunnel-manager issue asks for:
IKEv2 / IKEv1 main / IKEv1 aggressive x PSK / RSA / ECDSA certificates x either side initiating,
with two proposal suites per IKE version. Every case checks that both ends agree on SPIs and
algorithms, pings from each inside network to the other and captures the wire between the
gateways: only IKE and ESP-in-UDP with the negotiated SPIs.

To stay short, each case runs both roles on one pair of hosts (ours initiates, traffic, we delete;
then charon initiates, traffic, charon deletes), and the suites alternate over the cases rather than
being crossed with them; every exchange runs with both of its version's suites.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from interop_pair import SS_DH, SS_ENCR, SUITES, Pair, interop_pair, prerequisites, wait_for

EXCHANGES = {"ikev2": (2, "main"), "ikev1-main": (1, "main"), "ikev1-aggr": (1, "aggressive")}
AUTHS = ["psk", "rsa", "ecdsa"]


def _cases() -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    for xchg, (version, _) in EXCHANGES.items():
        suites = [name for (v, name) in SUITES if v == version]
        for auth in AUTHS:
            out.append((xchg, auth, suites[len(out) % 2]))
    return out


@pytest.fixture
def pair() -> Iterator[Pair]:
    prerequisites()
    with interop_pair() as p:
        yield p


@pytest.mark.parametrize(("xchg", "auth", "suite"), _cases())
def test_matrix(pair: Pair, xchg: str, auth: str, suite: str) -> None:
    version, mode = EXCHANGES[xchg]
    params = SUITES[(version, suite)]
    # RSA cases use DN identities, ECDSA ones the addresses (carried as IP SANs): both identity kinds.
    t = pair.tunnel(auth=auth, dn_ids=auth == "rsa", version=version, mode=mode, **params)
    pair.configure(t)
    ike, esp = t.ike[0], t.esp[0]
    for role in ("ours", "peer"):
        rec, child = pair.establish(role, version)
        sa = pair.peer.list_sas("ike")[0]
        assert sa.encr_alg == SS_ENCR[ike.encr] and sa.encr_keysize == ike.keylen
        assert sa.dh_group == SS_DH[ike.dh]
        assert child.encr_alg == SS_ENCR[esp.encr] and child.encr_keysize == esp.keylen
        if version == 1 and t.pfs:  # IKEv2's first child comes with IKE_AUTH: no DH of its own
            assert child.dh_group == SS_DH[t.pfs]
        if auth != "psk":
            assert sa.remote_id == ("C=US, O=ike test, CN=gw-ours" if auth == "rsa" else pair.a.outer4), sa
        assert rec["auth"] == auth, rec
        pair.check_traffic(child)
        after = pair.peer.list_sas("ike")[0].child("net")
        assert after is not None and after.packets_in >= 6 and after.packets_out >= 6

        if role == "ours":
            pair.ours.ike("cmd=remove", "all")
            pair.peer.wait_no_sas(timeout=10)  # our DELETE reached charon
        else:
            pair.peer.terminate(ike="ike")
            pair.peer.wait_no_sas(timeout=10)
        # the DELETE ends the tunnel on our side as well (it may stay listed as ended)
        wait_for(
            lambda: not [x for x in pair.our_tunnels() if x["state"] in ("established", "negotiating")],
            10,
            lambda: str(pair.our_tunnels()) + pair.ours.log(40),
        )
