"""Data plane backends: where negotiated child SAs carry traffic.

    dp = create_backend("auto")          # xfrm if the kernel holds ESP SAs, else userspace (logged)
    await dp.start()
    dp.set_expiry_callback(on_expiry)    # (child_id, "soft" | "hard")
    dp.bypass_socket(sock500); dp.attach_udp_socket(sock4500, on_ike)   # or receive_udp_esp/set_udp_sender
    dp.install(child)                    # ChildSaEstablished -> SAs, routes/policies for its selectors
    dp.counters(child_id); dp.remove(child_id)
    await dp.close()

Modules: base (interface, create_backend), esp (RFC 4303 transform per SA), spd (selector lookups),
gro (TCP receive coalescing into the TUN device), userspace (ESP over TUN, tunnel and transport mode),
transport (transport mode headers and RFC 3948 checksums), nftfilter (drops cleartext that bypasses a
tunnel), xfrm (kernel IPsec over netlink), none (negotiation only), manual (static SAs from the
command line).
"""

from ike.dataplane.base import ChildCounters, DataPlane, DataPlaneError, create_backend

__all__ = ["ChildCounters", "DataPlane", "DataPlaneError", "create_backend"]
