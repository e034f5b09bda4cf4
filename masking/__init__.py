"""Masking: PII and secrets never leave the source (DESIGN.md section 6)."""
