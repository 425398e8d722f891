"""The daily chain: the runner and its steps, catching up, the run report."""
