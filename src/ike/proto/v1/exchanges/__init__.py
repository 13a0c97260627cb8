"""The IKEv1 exchanges, one module each, like strongSwan's task files:

phase1.py           what main and aggressive mode share (proposal choice, DH, SKEYID, NAT-D, auth)
main_mode.py        Main Mode (identity protection), initiator and responder, state table
aggressive_mode.py  Aggressive Mode, initiator and responder, state table
quick_mode.py       Quick Mode (phase 2, PFS, NAT-T encapsulation, RESPONDER-LIFETIME)
informational.py    Delete, notifications, DPD R-U-THERE / R-U-THERE-ACK
"""

from ike.proto.v1.exchanges.errors import Drop, ExchangeFailed

__all__ = ["Drop", "ExchangeFailed"]
