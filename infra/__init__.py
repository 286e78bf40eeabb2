"""Shared kernel: settings, the event envelope, client factories, logging, the embedded stack.

Imports no service package.
"""
