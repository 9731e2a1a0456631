"""Pluggable workers: the learning happens here, behind the context the daemon gives them."""
