"""asyncio adapters around wire/: transports, discovery, peer links, gossip routing.

net/ never parses bytes itself: it feeds wire/.
"""
