"""A generated toy weakly-labeled corpus: the whole qsep chain in minutes on a laptop CPU."""
