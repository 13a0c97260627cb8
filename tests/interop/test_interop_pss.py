"""IKEv2 with RSA certificates where charon signs with RSASSA-PSS (`local { auth = rsa/pss-sha256 }`,
RFC 7427): our engine verifies it, and answers a peer that signed with PSS with PSS, so a charon that
also demands PSS from us (`remote { auth = ike:rsa/pss-sha256 }`: IKE signature only, our test CA
signs certificates with PKCS#1) accepts us. Before, our engine refused
the PSS AlgorithmIdentifier and the tunnel never came up."""

from __future__ import annotations

import re

import pytest
from interop_pair import SUITES, Pair, interop_pair, prerequisites


def _set_auth(pair: Pair, local: str, remote: str) -> None:
    """charon's own and required peer authentication (Conn renders both as `pubkey`)."""
    conf = pair.peer.swanctl_conf.read_text()
    mine, _, theirs = conf.partition("remote {")
    assert "auth = pubkey" in mine and "auth = pubkey" in theirs, conf
    conf = (
        mine.replace("auth = pubkey", f"auth = {local}")
        + "remote {"
        + theirs.replace("auth = pubkey", f"auth = {remote}", 1)
    )
    pair.peer.swanctl_conf.write_text(conf)
    pair.peer.swanctl("--load-all", "--clear", "--file", str(pair.peer.swanctl_conf))


@pytest.mark.parametrize(
    ("role", "remote_auth"),
    [("ours", "pubkey"), ("peer", "pubkey"), ("peer", "ike:rsa/pss-sha256")],
    ids=["we-initiate", "charon-initiates", "charon-initiates-requires-pss"],
)
def test_rsa_pss(role: str, remote_auth: str) -> None:
    prerequisites()
    with interop_pair() as pair:
        t = pair.tunnel(auth="rsa", version=2, **SUITES[(2, "gcm128-x25519")])
        pair.configure(t)
        _set_auth(pair, "rsa/pss-sha256", remote_auth)
        rec, child = pair.establish(role, 2)
        assert rec["auth"] == "rsa", rec
        log = pair.peer.log(2000)
        # charon signed with PSS ...
        assert re.search(r"authentication of '[^']*' \(myself\) with RSA_EMSA_PSS_SHA2_256\S* successful", log), log
        if role == "peer":
            # ... and, as we answered in kind, verified PSS from us
            assert re.search(r"authentication of '[^']*' with RSA_EMSA_PSS_SHA2_256\S* successful", log), log
        pair.check_traffic(child)
