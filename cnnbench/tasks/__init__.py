"""Trainer task plug-ins; see base.py."""
