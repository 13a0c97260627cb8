"""Inbound filter for the userspace data plane: cleartext that should have come through a tunnel is
dropped, as a kernel IPsec "in" policy would drop it.

A packet whose source lies in a child's remote selectors and whose destination lies in its local
selectors must arrive decrypted, i.e. through the TUN device. Anything else with those addresses
(sent in the clear past the tunnel) is dropped in the input and forward hooks.

One nftables table per data plane (`inet ike` for the default TUN device), made at start, removed at
close. Each install/remove is one nftables transaction that adds/deletes set elements only, run
through libnftables in-process (the library behind `nft`, a fraction of a millisecond) or, where it
cannot be loaded, the `nft` program (a few milliseconds):

- address-only selector pairs (the usual case) are cut into CIDR blocks, like the SPD (spd.py), and
  kept in hash sets keyed by `source network . destination network`, one set and one rule per
  (family, source prefix length, destination prefix length) in use, so a packet costs one hash
  look-up per prefix-length pair, whatever the number of tunnels;
- selectors that restrict protocol or ports go into one interval set per family keyed by
  `saddr . daddr . l4proto . th sport . th dport`. ICMP selectors are matched on protocol alone
  (type/code are not where `th` reads ports), which drops a little more than a kernel would.

Identical elements from several children (a rekeyed child has its predecessor's selectors) are
reference-counted here, so the set holds each once and it leaves with the last child using it.
IKE (UDP 500/4500), ESP, loopback, IPv6 neighbour discovery and ICMP errors always pass (the last so
that path MTU discovery keeps working for host-to-host tunnels, whose ESP packets travel between
addresses inside the selectors; a kernel checks such errors against the packet they quote instead).
Fragments after the first pass too: IPv6 reassembles only after the input hook (IPv4 before it, but
not when forwarding), so the pieces of a fragmented ESP packet between two hosts inside each other's
selectors would otherwise be lost; without its first fragment, which carries the ports and is
checked like any packet, no datagram is ever put together from them.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence

from ike.dataplane.spd import cidr_blocks
from ike.policy import TrafficSelector

log = logging.getLogger("ike.dataplane.nftfilter")

_ICMP = frozenset((1, 58))

Runner = Callable[[str], tuple[int, str]]  # nft script -> (exit code, error text)


class FilterError(Exception):
    """nft refused a change; the message carries nft's own words."""


def _run_nft(script: str) -> tuple[int, str]:
    proc = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, check=False)
    return proc.returncode, (proc.stderr or proc.stdout).strip()


class LibNft:
    """libnftables through ctypes: one context, a script per call, errors read back after each."""

    def __init__(self, name: str = "libnftables.so.1") -> None:
        lib = ctypes.CDLL(name)  # OSError when it is not installed
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for f in ("nft_ctx_buffer_error", "nft_ctx_buffer_output", "nft_ctx_free"):
            getattr(lib, f).argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            raise OSError(f"{name}: nft_ctx_new failed")
        lib.nft_ctx_buffer_output(ctx)  # nothing of nft's reaches our stdout
        lib.nft_ctx_buffer_error(ctx)
        self._lib, self._ctx = lib, ctx

    def __call__(self, script: str) -> tuple[int, str]:
        rc = self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
        err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""  # reading it empties it
        return (0 if rc == 0 else 1), err.decode(errors="replace").strip()

    def close(self) -> None:
        if self._ctx:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None


def table_name_for(tun_name: str) -> str:
    """`ike` for the default device, else one derived from the device name (one table per plane)."""
    if tun_name == "ike0":
        return "ike"
    return "ike_" + re.sub(r"[^A-Za-z0-9_]", "_", tun_name)


def _mask(version: int, plen: int) -> str:
    bits = 32 if version == 4 else 128
    return str(ipaddress.ip_address(((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1)))


def _rng(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _addr_rng(ts: TrafficSelector) -> str:
    return str(ts.start) if ts.start == ts.end else f"{ts.start}-{ts.end}"


Element = tuple[str, str]  # (set name, element text)


def elements(local_ts: Iterable[TrafficSelector], remote_ts: Iterable[TrafficSelector]) -> list[Element]:
    """The set elements that describe "from the remote selectors to the local ones" (no duplicates)."""
    out: dict[Element, None] = {}
    local = list(local_ts)
    for r in remote_ts:
        for lo in local:
            if lo.version != r.version:
                continue
            v = r.version
            r_any = r.protocol == 0 and r.port_start == 0 and r.port_end == 65535
            l_any = lo.protocol == 0 and lo.port_start == 0 and lo.port_end == 65535
            if r_any and l_any:
                for rn, rp in cidr_blocks(r):
                    for ln, lp in cidr_blocks(lo):
                        el = f"{ipaddress.ip_address(rn)} . {ipaddress.ip_address(ln)}"
                        out[(f"a{v}_{rp}_{lp}", el)] = None
                continue
            if r.protocol and lo.protocol and r.protocol != lo.protocol:
                continue  # no packet can match both
            proto = r.protocol or lo.protocol
            protos = _rng(proto, proto) if proto else "0-255"
            if proto in _ICMP:
                sp = dp = "0-65535"
            else:
                sp, dp = _rng(r.port_start, r.port_end), _rng(lo.port_start, lo.port_end)
            out[(f"p{v}", f"{_addr_rng(r)} . {_addr_rng(lo)} . {protos} . {sp} . {dp}")] = None
    return list(out)


def _set_decl(table: str, name: str) -> tuple[str, str]:
    """(`add set ...`, `add rule ...`) for a set name made by `elements`."""
    if name.startswith("p"):
        v = int(name[1:])
        t = "ipv4_addr" if v == 4 else "ipv6_addr"
        ip = "ip" if v == 4 else "ip6"
        return (
            f"add set inet {table} {name} {{ type {t} . {t} . inet_proto . inet_service . inet_service; "
            "flags interval; }",
            f"add rule inet {table} check {ip} saddr . {ip} daddr . meta l4proto . th sport . th dport "
            f"@{name} counter drop",
        )
    fam, rp, lp = name[1:].split("_")
    v = int(fam)
    t = "ipv4_addr" if v == 4 else "ipv6_addr"
    ip = "ip" if v == 4 else "ip6"
    return (
        f"add set inet {table} {name} {{ type {t} . {t}; }}",
        f"add rule inet {table} check {ip} saddr & {_mask(v, int(rp))} . {ip} daddr & {_mask(v, int(lp))} "
        f"@{name} counter drop",
    )


def base_script(table: str, tun_name: str) -> str:
    """A fresh table (any leftover of a crashed run goes first) with the always-pass rules."""
    return f"""table inet {table}
delete table inet {table}
table inet {table} {{
  chain check {{
    iifname "{tun_name}" accept
    meta l4proto esp accept
    udp dport {{ 500, 4500 }} accept
    ip frag-off & 0x1fff != 0 accept
    frag frag-off != 0 accept
    icmp type {{ destination-unreachable, time-exceeded, parameter-problem }} accept
    icmpv6 type {{ destination-unreachable, packet-too-big, time-exceeded, parameter-problem, nd-router-solicit, \
nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect }} accept
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iif lo accept
    jump check
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    jump check
  }}
}}
"""


class InboundFilter:
    """The nftables table of one data plane. `add`/`remove` per child; `active` is False when nft is
    missing or refused the table (then everything is a no-op and the reason was logged)."""

    def __init__(
        self, tun_name: str, table: str | None = None, run: Runner | None = None, lib: str = "libnftables.so.1"
    ) -> None:
        self.tun_name = tun_name
        self.table = table or table_name_for(tun_name)
        self._run: Runner = run or _run_nft
        self._given = run is not None
        self._libname = lib
        self._lib: LibNft | None = None
        self.active = False
        self._sets: set[str] = set()
        self._refs: dict[Element, int] = {}
        self._by_key: dict[int, list[Element]] = {}
        self.unfiltered = 0  # elements nft refused (overlapping port-restricted selectors)

    def start(self) -> bool:
        if not self._given:
            try:
                self._lib = LibNft(self._libname)
                self._run = self._lib
            except (OSError, AttributeError) as e:
                if shutil.which("nft") is None:
                    log.warning(
                        "nft (package nftables) is not installed: cleartext packets that bypass the tunnels are "
                        "NOT dropped; install nftables for the inbound IPsec policy check"
                    )
                    return False
                log.info("libnftables not usable (%s): the filter runs the nft program", e)
        rc, err = self._run(base_script(self.table, self.tun_name))
        if rc != 0:
            log.warning(
                "nftables table inet %s could not be made (%s): cleartext packets that bypass the tunnels are "
                "NOT dropped",
                self.table,
                err,
            )
            return False
        self.active = True
        log.info("inbound filter: nftables table inet %s", self.table)
        return True

    def add(self, key: int, local_ts: Sequence[TrafficSelector], remote_ts: Sequence[TrafficSelector]) -> None:
        """Drop cleartext from `remote_ts` to `local_ts`. Raises FilterError if nft refuses."""
        if not self.active:
            return
        if key in self._by_key:
            self.remove(key)
        els = elements(local_ts, remote_ts)
        new = [e for e in els if self._refs.get(e, 0) == 0]
        if new:
            rc, err = self._run(self._script(new, "add"))
            if rc != 0:
                # An interval set refuses an element overlapping another (different port-restricted
                # selectors of two children): keep the rest, say what is not filtered.
                plain = [e for e in new if not e[0].startswith("p")]
                if len(plain) == len(new) or (plain and self._run(self._script(plain, "add"))[0] != 0):
                    raise FilterError(f"nft refused the filter elements for child SA {key}: {err}")
                refused = [e for e in new if e[0].startswith("p")]
                self.unfiltered += len(refused)
                log.warning(
                    "child SA %d: cleartext matching its port-restricted selectors is not filtered (%s)", key, err
                )
                els = [e for e in els if e not in refused]
                for e in plain:
                    self._sets.add(e[0])
            else:
                for e in new:
                    self._sets.add(e[0])
        for e in els:
            self._refs[e] = self._refs.get(e, 0) + 1
        self._by_key[key] = els

    def remove(self, key: int) -> None:
        els = self._by_key.pop(key, None)
        if not els or not self.active:
            return
        gone = []
        for e in els:
            n = self._refs.get(e, 0) - 1
            if n <= 0:
                self._refs.pop(e, None)
                gone.append(e)
            else:
                self._refs[e] = n
        if gone:
            rc, err = self._run(self._script(gone, "delete"))
            if rc != 0:
                log.warning("nft could not delete the filter elements of child SA %d: %s", key, err)

    def _script(self, els: list[Element], verb: str) -> str:
        lines: list[str] = []
        if verb == "add":
            for name in sorted({n for n, _ in els} - self._sets):
                lines.extend(_set_decl(self.table, name))
        by_set: dict[str, list[str]] = {}
        for name, el in els:
            by_set.setdefault(name, []).append(el)
        for name, items in by_set.items():
            lines.append(f"{verb} element inet {self.table} {name} {{ {', '.join(items)} }}")
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        if self.active:
            rc, err = self._run(f"delete table inet {self.table}\n")
            if rc != 0:
                log.warning("nftables table inet %s could not be removed: %s", self.table, err)
        if self._lib is not None:
            self._lib.close()
            self._lib = None
        self.active = False
        self._sets.clear()
        self._refs.clear()
        self._by_key.clear()
