"""Every built-in rule id, in one place.

A refusal always names a rule: the user's own (`[[rules]] id`), a guardrail of the catalogue
(`policy.guardrails`, whose ids live with their checks), or one of the built-in ids below. Code
that decides or refuses uses these constants, never a string literal, so the id a client reads,
the audit record and `sqlward policy test` cannot drift apart. docs/policy.md lists them for
users ("Built-in refusals").
"""

from __future__ import annotations

from typing import Final

# -- decided by the policy engine ------------------------------------------------------------
UNPARSEABLE: Final = "unparseable"  # sqlglot could not read the statement
DYNAMIC_SQL: Final = "dynamic-sql"  # PREPARE ... FROM '...', EXECUTE s, EXECUTE IMMEDIATE
DEFAULT: Final = "default"  # no rule matched: the environment's default action
ESTIMATE_PENDING: Final = "estimate-pending"  # a rows_over rule waits for an EXPLAIN estimate

# -- built-in checks of the statement pipeline (gateway.pipeline) -----------------------------
IDENTITY_TAMPERING: Final = "identity-tampering"  # SET sqlward.*, @sqlward_identity, ...
TOKEN_EXPIRED: Final = "token-expired"  # the session's token expired (on_token_expiry = "refuse")
LOCAL_INFILE: Final = "local-infile"  # MySQL LOAD DATA LOCAL on a target that does not allow it
KILL_FORM: Final = "kill-form"  # MySQL KILL in any form but `KILL [CONNECTION | QUERY] <id>` alone
OWN_SESSION: Final = "own-session"  # MySQL KILL of one of the identity's own gateway sessions
FUNCTION_CALL: Final = "function-call"  # PostgreSQL FunctionCall protocol message
COMMAND_NOT_ALLOWED: Final = "command-not-allowed"  # MySQL COM_CREATE_DB, COM_DROP_DB, ...
MASKING_UNAVAILABLE: Final = "masking-unavailable"  # the schema catalogue could not be read
MASKING_CURSOR: Final = "masking-cursor"  # a MySQL cursor whose rows cannot be masked
INTERNAL_ERROR: Final = "internal-error"  # analysis or policy raised: fail closed
AUDIT_UNAVAILABLE: Final = "audit-unavailable"  # the decision could not be recorded: fail closed
APPROVALS_UNAVAILABLE: Final = "approvals-unavailable"  # the approval store cannot be read or written
SEARCH_PATH_UNKNOWN: Final = "search-path-unknown"  # PostgreSQL: where a bare name resolves is unknown
CLIENT_CHARSET: Final = "client-charset"  # MySQL: the server reads a charset the analysis cannot
SQL_READING: Final = "sql-reading"  # a setting that changes how the server reads SQL text (PG standard_conforming_strings, MySQL sql_mode)

# -- connection level (not a statement rule) --------------------------------------------------
ACCESS: Final = "access"  # [[access]] does not let the identity reach the target

# -- masking ----------------------------------------------------------------------------------
MASK_ON_DOUBT: Final = "mask-on-doubt"  # a column whose origin is unknown is masked whole

ALL: Final = frozenset(
    {
        UNPARSEABLE, DYNAMIC_SQL, DEFAULT, ESTIMATE_PENDING, IDENTITY_TAMPERING, TOKEN_EXPIRED,
        LOCAL_INFILE, KILL_FORM, OWN_SESSION, FUNCTION_CALL, COMMAND_NOT_ALLOWED,
        MASKING_UNAVAILABLE, MASKING_CURSOR, INTERNAL_ERROR, AUDIT_UNAVAILABLE, APPROVALS_UNAVAILABLE, ACCESS, MASK_ON_DOUBT,
        SEARCH_PATH_UNKNOWN, CLIENT_CHARSET, SQL_READING,
    }
)
