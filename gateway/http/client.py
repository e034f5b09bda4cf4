"""`sqlward approvals ...`: the approver's commands, over the admin API.

    sqlward approvals list [--status pending|all|S1,S2] [--limit N] [--offset N] [--requester SUBJECT] [--json]
    sqlward approvals show ID [--json]
    sqlward approvals approve ID [--comment TEXT] [--json]
    sqlward approvals reject ID [--comment TEXT] [--json]

  each with  --url URL (default $SQLWARD_ADMIN_URL), --token TOKEN | --token-file FILE (default
  $SQLWARD_TOKEN), --ca-file FILE (a private CA for an https URL), --timeout SECONDS.

How it works: `add_commands` adds the subcommands to `gateway.cli`'s parser; `run(args)` makes one
synchronous httpx call (`Authorization: Bearer <token>`, TLS verified against the system store or
`--ca-file`) to `URL/api/v1/...` and decodes the answer with the API's own Structs
(`gateway.http.schema`). Human output is a table (list) or a summary (show, approve, reject):
id, status, requester with its actor chain, target and environment, rules, the statement,
expiry and decisions; `--json` prints the server's JSON as it came.

Exit status: 0 done; 1 the server refused (its `{"error": ...}` is printed: 401, 403, 404, 409,
503, ...); 2 usage or connection problems (no URL or token, an unreadable token or CA file, the
server unreachable, a TLS failure, an answer that is not the API's), always a sentence naming
the URL, never a traceback.

Only `schema` is imported from the admin side: the CLI loads neither starlette nor hypercorn.
"""

from __future__ import annotations

import argparse
import datetime
import os
import ssl
import sys
import time
import unicodedata
from typing import TypeVar, get_args
from urllib.parse import quote

import msgspec

from sqlward.gateway.approvals.model import Status
from sqlward.gateway.http.schema import MAX_LIMIT, Approval, ApprovalList, ErrorBody

__all__ = ["add_commands", "run"]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
STATUSES: tuple[str, ...] = get_args(Status)
T = TypeVar("T")


class _Usage(Exception):
    """A usage or connection problem (exit 2); the message is printed as it is."""


class _Refused(Exception):
    """The server answered with an error (exit 1)."""


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `approvals list | show | approve | reject` to the `sqlward` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default=None, metavar="URL",
        help="the admin API, e.g. https://sqlward.example.com:8443 (default: $SQLWARD_ADMIN_URL)",
    )
    token = common.add_mutually_exclusive_group()
    token.add_argument("--token", default=None, metavar="TOKEN", help="bearer token: an OIDC access token or a bot's API token (default: $SQLWARD_TOKEN)")
    token.add_argument("--token-file", default=None, metavar="FILE", help="read the bearer token from FILE")
    common.add_argument("--ca-file", default=None, metavar="FILE", help="trust this CA (PEM) for an https URL with a private CA")
    common.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS", help="give up after this long (default 30)")
    common.add_argument("--json", action="store_true", help="print the API's JSON answer")

    approvals = sub.add_parser(
        "approvals", help="list, show, approve or reject approval requests (through the admin API)",
        description="Approve or reject reviewed statements through the gateway's admin API. Exit status: 0 done, "
        "1 the server refused (its message is printed), 2 usage or connection error.",
    )
    cmds = approvals.add_subparsers(dest="approvals_command", metavar="COMMAND")
    ls = cmds.add_parser("list", parents=[common], help="list approval requests, newest first")
    ls.add_argument(
        "--status", default="pending", metavar="STATUS",
        help=f"pending (default), all, or a comma-separated list of {', '.join(STATUSES)}",
    )
    ls.add_argument("--limit", type=int, default=100, metavar="N", help=f"at most N requests (1 to {MAX_LIMIT}, default 100)")
    ls.add_argument("--offset", type=int, default=0, metavar="N", help="skip the N newest matching requests (paging)")
    ls.add_argument("--requester", default="", metavar="SUBJECT", help="only the requests of this identity")
    show = cmds.add_parser("show", parents=[common], help="show one approval request")
    show.add_argument("id", metavar="ID", help="approval request id (ap-...)")
    for verdict in ("approve", "reject"):
        p = cmds.add_parser(verdict, parents=[common], help=f"{verdict} a pending approval request")
        p.add_argument("id", metavar="ID", help="approval request id (ap-...)")
        p.add_argument("--comment", "-m", default="", metavar="TEXT", help="why (kept with the decision and in the audit trail)")


def run(args: argparse.Namespace) -> int:
    """Run one `approvals` command; returns the exit status (module doc)."""
    command = args.approvals_command
    if command is None:
        print("sqlward approvals: expected a command: list, show, approve or reject", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _run(command, args)
    except _Usage as exc:
        print(f"sqlward approvals {command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except _Refused as exc:
        print(f"sqlward approvals {command}: {exc}", file=sys.stderr)
        return EXIT_REFUSED


def _run(command: str, args: argparse.Namespace) -> int:
    url = (args.url or os.environ.get("SQLWARD_ADMIN_URL", "")).strip().rstrip("/")
    if not url:
        raise _Usage("no admin API URL: pass --url or set SQLWARD_ADMIN_URL")
    if not url.startswith(("http://", "https://")):
        raise _Usage(f"expected an http:// or https:// URL, got {url!r}")
    url = url.removesuffix("/api/v1")
    token = _token(args)
    verify: ssl.SSLContext | bool = True
    if args.ca_file:
        try:
            verify = ssl.create_default_context(cafile=args.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise _Usage(f"cannot read the CA file {args.ca_file}: {exc}") from None
    import httpx

    if command == "list":
        statuses = args.status.strip()
        if not 1 <= args.limit <= MAX_LIMIT:
            raise _Usage(f"--limit must be from 1 to {MAX_LIMIT}")
        if args.offset < 0:
            raise _Usage("--offset must be 0 or more")
        params = {"limit": str(args.limit)}
        if args.offset:
            params["offset"] = str(args.offset)
        if args.requester:
            params["requester"] = args.requester
        if statuses != "all":
            bad = [s for s in statuses.split(",") if s.strip() not in STATUSES]
            if bad:
                raise _Usage(f"unknown status {bad[0]!r} (expected all, or a comma-separated list of {', '.join(STATUSES)})")
            params["status"] = ",".join(s.strip() for s in statuses.split(","))
        method, path, body = "GET", "/api/v1/approvals", None
    else:
        approval_id = quote(args.id.strip(), safe="")
        if not approval_id:
            raise _Usage("expected an approval request id")
        params = {}
        if command == "show":
            method, path, body = "GET", f"/api/v1/approvals/{approval_id}", None
        else:
            method, path, body = "POST", f"/api/v1/approvals/{approval_id}/{command}", msgspec.json.encode({"comment": args.comment})
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json", "User-Agent": "sqlward-cli"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    try:
        with httpx.Client(verify=verify, timeout=args.timeout, follow_redirects=False) as client:
            response = client.request(method, url + path, params=params, headers=headers, content=body)
    except httpx.TimeoutException:
        raise _Usage(f"no answer from the admin API at {url} within {args.timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise _Usage(f"cannot reach the admin API at {url}: {_reason(exc)}") from None
    except ValueError as exc:  # e.g. a malformed URL
        raise _Usage(f"cannot call the admin API at {url}: {exc}") from None

    if response.status_code != 200:
        try:
            message = msgspec.json.decode(response.content, type=ErrorBody).error
        except msgspec.DecodeError:
            raise _Usage(f"{url} answered HTTP {response.status_code}, which is not the sqlward admin API's answer") from None
        raise _Refused(f"refused (HTTP {response.status_code}): {_safe(message)}")
    if command == "list":
        listed = _decode(response.content, ApprovalList, url)
        print(response.text if args.json else _table(listed.approvals))
        return EXIT_OK
    one = _decode(response.content, Approval, url)
    if args.json:
        print(response.text)
    elif command == "show":
        print(_summary(one))
    else:
        print(_decided(one, command))
    return EXIT_OK


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:
            raise _Usage(f"cannot read the token file {args.token_file}: {exc.strerror or exc}") from None
        if not token:
            raise _Usage(f"the token file {args.token_file} is empty")
        return token
    token = (args.token or os.environ.get("SQLWARD_TOKEN", "")).strip()
    if not token:
        raise _Usage("no bearer token: pass --token or --token-file, or set SQLWARD_TOKEN")
    return token


def _reason(exc: BaseException) -> str:
    """The innermost useful sentence of a connection failure (httpx often wraps an empty one)."""
    seen: BaseException | None = exc
    best = str(exc)
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted ({seen.verify_message}); pass --ca-file for a private CA"
        if str(seen):
            best = str(seen)
        seen = seen.__cause__ or seen.__context__
    return best or type(exc).__name__


def _decode(content: bytes, kind: type[T], url: str) -> T:
    try:
        return msgspec.json.decode(content, type=kind)
    except msgspec.DecodeError as exc:
        raise _Usage(f"{url} answered something that is not the sqlward admin API's answer ({exc})") from None


# -- human output ----------------------------------------------------------------------------------
#
# Every text in a request came from someone else (the requester's statement, reason, names; an
# approver's comment): control characters (an ANSI escape could rewrite what the terminal shows),
# invisible format characters (bidi overrides) and spaces other than U+0020 (which the servers read
# as name characters) are shown escaped, never sent to the terminal as they are.


def _safe(text: str) -> str:
    out = []
    for ch in text:
        if ch == "\t":
            out.append("    ")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn") or (ch != " " and unicodedata.category(ch) == "Zs"):
            # (spaces other than U+0020 too: the servers read a no-break space as part of a name,
            # so "x<NBSP>WHERE<NBSP>id" is one alias, not a WHERE clause)
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _until(t: float, now: float) -> str:
    left = t - now
    if left <= 0:
        return "passed"
    if left < 120:
        return f"in {left:.0f}s"
    if left < 7200:
        return f"in {left / 60:.0f}m"
    return f"in {left / 3600:.1f}h"


def _who(a: Approval) -> str:
    r = a.requester
    return _safe(r.subject + (f" via {' > '.join(r.actor)}" if r.actor else ""))


def _one_line(text: str, width: int) -> str:
    flat = _safe(" ".join(text.split()))
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _table(approvals: tuple[Approval, ...]) -> str:
    if not approvals:
        return "no approval requests"
    now = time.time()
    rows = [("ID", "STATUS", "REQUESTER", "TARGET", "RULES", "EXPIRES", "STATEMENT")]
    for a in approvals:
        expires = _until(a.expires, now) if a.status in ("pending", "approved") else "-"
        rows.append((
            _safe(a.id), a.status, _who(a), _safe(f"{a.target} ({a.environment})"), _safe(",".join(a.rules)) or "-", expires,
            _one_line(a.sql, 80),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows)


def _summary(a: Approval) -> str:
    now = time.time()
    r = a.requester
    lines = [
        f"approval request {a.id}: {a.status}",
        f"  requester:   {_who(a)}" + (f" [{', '.join(r.groups)}]" if r.groups else "")
        + (f" ({r.verified_by}{', ' + r.issuer if r.issuer else ''})" if r.verified_by else ""),
        f"  target:      {a.target} ({a.environment}, {a.protocol})" + (f" as {a.upstream_role}" if a.upstream_role else ""),
    ]
    if a.names:
        lines.append(f"  names:       {a.names}")
    if a.reason:
        lines.append(f"  reason:      {a.reason}")
    lines.append(f"  rules:       {', '.join(a.rules) or '-'}" + (f": {a.message}" if a.message else ""))
    facts = []
    if a.operations:
        facts.append("operations " + ", ".join(a.operations))
    if a.tables:
        facts.append("tables " + ", ".join(a.tables))
    if a.estimated_rows is not None:
        facts.append(f"about {a.estimated_rows} rows")
    facts.extend(a.facts)
    if facts:
        lines.append(f"  facts:       {'; '.join(facts)}")
    lines.append(f"  mode:        {a.mode}")
    for req in a.requirements:
        who = ", ".join((*req.approvers, *(f"all of group:{g}" for g in req.all_groups)))
        lines.append(
            f"  needs:       {req.approvals} approval{'s' if req.approvals != 1 else ''} from {who or 'nobody'}"
            + (" (or the agent's principal)" if req.principal else "")
        )
    lines.append(f"  created:     {_when(a.created)}")
    lines.append(f"  expires:     {_when(a.expires)}" + (f" ({_until(a.expires, now)})" if a.status in ("pending", "approved") else ""))
    if a.decided is not None:
        lines.append(f"  decided:     {_when(a.decided)}")
    if a.executed is not None:
        lines.append(f"  executed:    {_when(a.executed)}")
    if a.error:
        lines.append(f"  error:       {a.error}")
    # Each line above is one line: any line break or control character inside a field is escaped.
    lines = [_safe(line) for line in lines]
    lines.append("  statement:")
    lines.extend(f"    {_safe(line)}" for line in a.sql.split("\n"))
    if a.parameters:
        lines.append(_safe("  parameters:  " + ", ".join("NULL" if p is None else repr(p) for p in a.parameters)))
    if a.decisions:
        lines.append("  decisions:")
        for d in a.decisions:
            by = f"{d.approver.kind} {d.approver.subject}" + (f" ({d.approver.verified_by})" if d.approver.verified_by else "")
            lines.append(_safe(f"    {_when(d.time)}  {d.verdict:<7}  {by}" + (f": {d.comment}" if d.comment else "")))
    else:
        lines.append("  decisions:   none yet")
    if a.link:
        lines.append(_safe(f"  link:        {a.link}"))
    return "\n".join(lines)


def _decided(a: Approval, verdict: str) -> str:
    done = "approved" if verdict == "approve" else "rejected"
    if a.status == "pending":
        return f"{_safe(a.id)}: your approval is recorded; the request is still pending (more approvals are needed)"
    return f"{_safe(a.id)}: {done}; the request is now {a.status}"
