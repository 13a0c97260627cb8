"""ike: an IKE/IPsec tunnel manager with the AIX `ike` command line."""

__version__ = "0.1.0"
