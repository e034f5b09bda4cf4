"""MySQL / MariaDB adapter: a sans-IO codec of the client/server protocol, sans-IO relay state,
and a thin trio driver.

Spec: https://dev.mysql.com/doc/dev/mysql-server/latest/PAGE_PROTOCOL.html and
https://mariadb.com/docs/server/reference/clientserver-protocol

Codec (no I/O):

* `constants`: capability bits (MariaDB's extended ones included), commands, status and column
  flags, field types, cursor flags, error numbers with their SQLSTATEs, collation ids.
* `packets`: the packet layer (3-byte length + sequence id, payloads over 16 MiB split and
  joined), `PacketFramer`, `encode_packets`, the primitive readers/writers and the typed errors
  (`ProtocolViolation` and subclasses, each carrying the errno / SQLSTATE to report).
* `messages`: one frozen msgspec Struct per message, `encode(msg, capabilities)` and a
  `decode_*` function per kind, classifiers (`is_ok`, `is_err`, `is_eof`, `is_result_end`) and
  helpers (`err_packet`, `ok_packet`, `eof_packet`, `command_of`).
* `auth`: the password algorithms (mysql_native_password, caching_sha2_password with RSA,
  MariaDB's client_ed25519), client and server side.

Relay state (no I/O):

* `response`: `ResponseScanner`, where a server response ends, without decoding rows (and the
  warning count, SESSION_TRACK_SCHEMA and the tracked character_set_client of its OK packets).
* `charsets`: the client character sets SQL is read in as the server reads it (utf8mb4,
  utf8mb3, binary, latin1, ascii) and the refusal of every other one; the in-session switches
  a request's text makes (`client_charset_effect`).
* `relaystate`: what the session keeps between commands: command routes, prepared statements
  and cursors, the current database (the server's) and text codec, completion records, and
  what the message rule of masked sessions needs.
* `maskrelay` / `rowmask`: masked responses (text and binary rows rewritten; the Message of
  SHOW WARNINGS / SHOW ERRORS hidden after a masked read).
* `server_state`: what a listener's sessions share (greeting facts, RSA pair, sha2 cache).
* `errors`: every errno / SQLSTATE the adapter answers with and `error_reply`, the one mapping
  from a gateway-side error or a refusal to an ERR packet.

I/O: `session` (one trio task per client connection: handshake, authentication, the command
loop asking the statement pipeline, relaying responses), `listener` (accepts, owns the session
registry and the server state), `upstream` (the gateway's own login to a server) and
`sidequery` (side connections for estimates and the catalogue).
"""
