"""One ComponentResource per tier; ``infra.program`` wires them together."""
