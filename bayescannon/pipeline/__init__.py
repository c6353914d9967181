"""Execution plumbing shared by every long run: atomic writes, the resumable chunk protocol
and worker pools."""
