"""Checking a drop or the whole database before anything is written: the check catalogue and the checks."""
