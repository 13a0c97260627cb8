"""The one exception type of the ISAKMP codec."""


class DecodeError(ValueError):
    """A malformed ISAKMP message or payload; the text names the field that was wrong."""
