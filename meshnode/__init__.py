"""meshnode: a peer-to-peer mesh daemon for machine learning over packed ternary HDC vectors."""

__version__ = "0.1.0"
