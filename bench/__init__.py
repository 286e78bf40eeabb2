"""Proof tools: the fault harness (`make faults`) and the side-by-side benchmark (`make bench`).

Both drive the real services as child processes (`python -m outbox_cli <service>`) against
an embedded stack of their own on free ports, so they can SIGKILL and restart anything.
"""
