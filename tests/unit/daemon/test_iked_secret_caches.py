"""Secrets kept between negotiations (a PSK's keyed PRF, parsed private keys) leave memory when the
tunnel definitions change, not whenever a bounded cache happens to evict them."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from test_iked_ipaddr import side
from test_iked_real_engines import A, B

from ike import certgen
from ike.daemon.engines import RealEngines
from ike.daemon.manager import TunnelManager
from ike.daemon.policies import IndexedPolicies
from ike.dataplane.none import NoneDataPlane
from ike.proto import certs, secretcache
from ike.proto.v2 import auth


def _fill(tmp_path: Path) -> None:
    auth.psk_auth("hmac-sha2-256", b"a pre-shared key of a deleted definition", b"octets")
    key = tmp_path / "gw.key"
    key.write_bytes(certgen.key_pem(certgen.make_ca("CN=secret cache test", "ecdsa").key))
    certs.load_private_key(str(key))
    assert auth._psk_prf.cache_info().currsize >= 1
    assert any(kind == "key" for kind, _path in certs._LOADED)


def test_forget_all_empties_every_cache_that_holds_secrets(tmp_path: Path) -> None:
    _fill(tmp_path)
    secretcache.forget_all()
    assert auth._psk_prf.cache_info().currsize == 0
    assert not certs._LOADED


def test_changed_definitions_clear_them_and_an_unchanged_view_does_not(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    try:
        first = side(A, B, 2, B)
        view: list[IndexedPolicies] = [first]
        m = TunnelManager(
            loop, first, RealEngines(first), lambda _dg: None, NoneDataPlane(), policy_loader=lambda: view[0]
        )
        _fill(tmp_path)
        m.reload_policies()  # the loader found the database unchanged: the same view
        assert auth._psk_prf.cache_info().currsize >= 1 and certs._LOADED
        view[0] = IndexedPolicies([], [], [])  # the definition (and its PSK) was removed
        m.reload_policies()
        assert m.policies is view[0]
        assert auth._psk_prf.cache_info().currsize == 0
        assert not certs._LOADED
    finally:
        loop.close()
