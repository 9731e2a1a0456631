"""The simulated network: the link model (links.py, sans-IO), a Transport over it (transport.py) and
virtual time for asyncio (vclock.py). docs/SIM.md describes the model and its presets."""

from .links import DATAGRAM, PRESETS, RELIABLE, DirectedLink, GilbertElliott, LinkProfile, preset
from .transport import SimNetwork, SimTransport
from .vclock import VirtualClock, VirtualTimeLoop, run_virtual

__all__ = ["DATAGRAM", "PRESETS", "RELIABLE", "DirectedLink", "GilbertElliott", "LinkProfile", "SimNetwork",
           "SimTransport", "VirtualClock", "VirtualTimeLoop", "preset", "run_virtual"]
