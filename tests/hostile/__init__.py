"""The hostile suite: attacks on a running daemon that a test can reproduce in seconds, each bounded
in time and in count (see issue 16, "The daemon under attack"). Real sockets on 127.0.0.x only."""
