"""The admin HTTP listener: the approvals API (later health, metrics and the console).

- `schema`: the API's boundary types (frozen msgspec Structs): what the routes return and accept,
  shared by the server, the CLI and the OpenAPI document; no web framework imported;
- `openapi`: the OpenAPI 3.1 document, generated from those Structs
  (`msgspec.json.schema_components`) and one table of routes;
- `app`: the Starlette application (bearer authentication of every request, group
  authorisation per route, JSON in and out through msgspec, errors mapped to statuses);
- `server`: `serve_admin`, hypercorn's trio worker inside the gateway's trio process;
- `client`: the `sqlward approvals ...` commands (httpx, synchronous), called by `gateway.cli`.

See docs/approvals.md (the API section) and DESIGN.md section 8a.
"""
