"""MySQL / MariaDB adapter: a sans-IO codec of the client/server protocol and its session driver.

Spec: https://dev.mysql.com/doc/dev/mysql-server/latest/PAGE_PROTOCOL.html and
https://mariadb.com/docs/server/reference/clientserver-protocol

* `constants`: capability bits (MariaDB's extended ones included), commands, status and column
  flags, field types, cursor flags, error numbers with their SQLSTATEs, collation ids.
* `packets`: the packet layer (3-byte length + sequence id, payloads over 16 MiB split and
  joined), `PacketFramer`, `encode_packets`, the primitive readers/writers and the typed errors
  (`ProtocolViolation` and subclasses, each carrying the errno / SQLSTATE to report).
* `messages`: one frozen msgspec Struct per message, `encode(msg, capabilities)` and a
  `decode_*` function per kind, classifiers (`is_ok`, `is_err`, `is_eof`, `is_result_end`) and
  helpers (`err_packet`, `ok_packet`, `eof_packet`, `command_of`).

Nothing in the codec imports trio or touches a socket; the session driver owns I/O, TLS,
timeouts and the per-connection state the codec needs (negotiated capabilities, sequence ids,
prepared statements' parameter counts and bound types).
"""
