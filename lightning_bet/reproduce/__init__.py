"""``lightning-bet reproduce``: measure the papers' claims end to end (METHOD §8)."""
