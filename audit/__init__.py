"""Audit trail: event types and the JSON-lines writer. Imports nothing else from the project."""
