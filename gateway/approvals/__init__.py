"""Inline approvals: a reviewed statement becomes an approval request that approvers decide.

- `model`: the request and its decisions (frozen msgspec Structs; what the store, the API and
  the audit trail carry);
- `binding`: the hash that binds an approval to exactly one statement in one context;
- `store`: the `ApprovalStore` interface with its SQLite (embedded default) and PostgreSQL
  (shared by gateway replicas) implementations; every transition is a compare-and-set;
- `service`: what the pipeline and the HTTP API call (request, wait, decide, withdraw, claim,
  expire) and the audit events of each transition;
- `webhooks`: notifications to chat and automation, signed, retried, off the statement's path.

See docs/approvals.md.
"""
