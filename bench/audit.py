"""Moved: the audit is now the product command `outbox audit` (operator_tools/audit.py).

The fault harness imports these two names from here; switch it to `operator_tools.audit`
and delete this module.
"""

from operator_tools.audit import AuditReport, audit_when_idle

__all__ = ["AuditReport", "audit_when_idle"]
