"""Search against a process reward model: best-of-N, beam, lookahead, DVTS (paper §5)."""
