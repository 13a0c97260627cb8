"""IKEv1 (ISAKMP/Oakley: RFC 2407, 2408, 2409) engine, sans-IO.

payloads/     ISAKMP codec, one module per payload family
keys.py       SKEYID and friends, cipher key expansion, IV chains, quick mode KEYMAT
encryption.py where messages are encrypted and decrypted
proposals.py  policy proposals <-> SA payloads, choice in local order
auth.py       HASH_I/HASH_R, pre-shared keys, RSA/ECDSA signatures
natt.py       NAT-D, NAT-T and DPD vendor IDs
exchanges/    main_mode, aggressive_mode, quick_mode, informational (state tables)
engine.py     Ikev1Engine (the Engine protocol of ike.proto.api) and demux
"""

from ike.proto.v1.engine import Ikev1Engine, demux

__all__ = ["Ikev1Engine", "demux"]
