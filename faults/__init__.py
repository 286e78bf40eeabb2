"""The fault harness: scenarios proving the guarantees under faults (`make faults`)."""
