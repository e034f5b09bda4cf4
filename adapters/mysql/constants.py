"""Numbers of the MySQL / MariaDB client/server protocol: capability bits, commands, status and
column flags, field types, cursor flags, session-tracking types, error numbers and collations.

Specs:

* MySQL: https://dev.mysql.com/doc/dev/mysql-server/latest/PAGE_PROTOCOL.html
  (capabilities: group__group__cs__capabilities__flags.html, status: mysql_com.h
  SERVER_STATUS_flags_enum, commands: my_command.h enum_server_command, types: field_types.h)
* MariaDB: https://mariadb.com/docs/server/reference/clientserver-protocol (1-connecting,
  mariadb-protocol-differences-with-mysql) and include/mysql_com.h of the server.

Capabilities are one 64-bit number in this package. The lower 32 bits are the classic flags both
servers use. MariaDB (10.2+) puts 32 more bits in the reserved bytes of the handshake
("server capabilities 3rd part") and of the client's response, and says so by clearing bit 0
(`CLIENT_LONG_PASSWORD` for MySQL, `CLIENT_MYSQL` for MariaDB), which MySQL servers and clients
always set. The `MARIADB_*` members below are those upper bits, already shifted into place.

All enums are `IntEnum` / `IntFlag`, so plain ints read off the wire compare equal to them; the
decoders in `messages` keep plain ints (a server may send bits or types newer than this table).
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

# --------------------------------------------------------------------------------------------
# Capabilities


class Capability(IntFlag):
    """Capability flags (`CLIENT_*`) negotiated in the handshake; 64 bits with MariaDB's."""

    LONG_PASSWORD = 1 << 0  # MySQL: always set; MariaDB: CLIENT_MYSQL, cleared by MariaDB
    FOUND_ROWS = 1 << 1  # affected rows = found (matched) rows
    LONG_FLAG = 1 << 2  # all column flags
    CONNECT_WITH_DB = 1 << 3  # schema name in the handshake response
    NO_SCHEMA = 1 << 4  # deprecated
    COMPRESS = 1 << 5  # compressed protocol (not supported by this codec)
    ODBC = 1 << 6
    LOCAL_FILES = 1 << 7  # LOAD DATA LOCAL INFILE
    IGNORE_SPACE = 1 << 8
    PROTOCOL_41 = 1 << 9  # 4.1 protocol: SQLSTATE in ERR, warnings in OK/EOF, ColumnDefinition41
    INTERACTIVE = 1 << 10
    SSL = 1 << 11  # switch to TLS after the SSLRequest
    IGNORE_SIGPIPE = 1 << 12
    TRANSACTIONS = 1 << 13  # status flags in OK
    RESERVED = 1 << 14  # old 4.1 protocol flag
    SECURE_CONNECTION = 1 << 15  # 4.1 authentication (RESERVED2 in MySQL 8)
    MULTI_STATEMENTS = 1 << 16
    MULTI_RESULTS = 1 << 17
    PS_MULTI_RESULTS = 1 << 18
    PLUGIN_AUTH = 1 << 19
    CONNECT_ATTRS = 1 << 20
    PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21
    CAN_HANDLE_EXPIRED_PASSWORDS = 1 << 22
    SESSION_TRACK = 1 << 23
    DEPRECATE_EOF = 1 << 24
    OPTIONAL_RESULTSET_METADATA = 1 << 25  # MySQL 8
    ZSTD_COMPRESSION_ALGORITHM = 1 << 26  # MySQL 8
    QUERY_ATTRIBUTES = 1 << 27  # MySQL 8.0.23+
    MULTI_FACTOR_AUTHENTICATION = 1 << 28  # MySQL 8.0.27+
    CAPABILITY_EXTENSION = 1 << 29  # MySQL; MariaDB: CLIENT_PROGRESS_OBSOLETE
    SSL_VERIFY_SERVER_CERT = 1 << 30
    REMEMBER_OPTIONS = 1 << 31
    # MariaDB extended capabilities (handshake "3rd part", only when bit 0 is clear)
    MARIADB_CLIENT_PROGRESS = 1 << 32  # progress reports (ERR packets with errno 0xFFFF)
    MARIADB_CLIENT_COM_MULTI = 1 << 33  # removed experiment; MARIADB_CLIENT_RESERVED_1 today
    MARIADB_CLIENT_STMT_BULK_OPERATIONS = 1 << 34  # COM_STMT_BULK_EXECUTE
    MARIADB_CLIENT_EXTENDED_TYPE_INFO = 1 << 35  # extended metadata in column definitions
    MARIADB_CLIENT_CACHE_METADATA = 1 << 36  # "metadata follows" byte, skipped metadata
    MARIADB_CLIENT_BULK_UNIT_RESULTS = 1 << 37  # 11.5.1+

    # Aliases
    CLIENT_MYSQL = LONG_PASSWORD
    PROGRESS_OBSOLETE = CAPABILITY_EXTENSION
    MARIADB_CLIENT_EXTENDED_METADATA = MARIADB_CLIENT_EXTENDED_TYPE_INFO
    MARIADB_CLIENT_RESERVED_1 = MARIADB_CLIENT_COM_MULTI


# Module-level names as the C headers spell them.
CLIENT_MYSQL = Capability.LONG_PASSWORD
CLIENT_LONG_PASSWORD = Capability.LONG_PASSWORD
CLIENT_FOUND_ROWS = Capability.FOUND_ROWS
CLIENT_LONG_FLAG = Capability.LONG_FLAG
CLIENT_CONNECT_WITH_DB = Capability.CONNECT_WITH_DB
CLIENT_NO_SCHEMA = Capability.NO_SCHEMA
CLIENT_COMPRESS = Capability.COMPRESS
CLIENT_ODBC = Capability.ODBC
CLIENT_LOCAL_FILES = Capability.LOCAL_FILES
CLIENT_IGNORE_SPACE = Capability.IGNORE_SPACE
CLIENT_PROTOCOL_41 = Capability.PROTOCOL_41
CLIENT_INTERACTIVE = Capability.INTERACTIVE
CLIENT_SSL = Capability.SSL
CLIENT_IGNORE_SIGPIPE = Capability.IGNORE_SIGPIPE
CLIENT_TRANSACTIONS = Capability.TRANSACTIONS
CLIENT_RESERVED = Capability.RESERVED
CLIENT_SECURE_CONNECTION = Capability.SECURE_CONNECTION
CLIENT_MULTI_STATEMENTS = Capability.MULTI_STATEMENTS
CLIENT_MULTI_RESULTS = Capability.MULTI_RESULTS
CLIENT_PS_MULTI_RESULTS = Capability.PS_MULTI_RESULTS
CLIENT_PLUGIN_AUTH = Capability.PLUGIN_AUTH
CLIENT_CONNECT_ATTRS = Capability.CONNECT_ATTRS
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA = Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA
CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS = Capability.CAN_HANDLE_EXPIRED_PASSWORDS
CLIENT_SESSION_TRACK = Capability.SESSION_TRACK
CLIENT_DEPRECATE_EOF = Capability.DEPRECATE_EOF
CLIENT_OPTIONAL_RESULTSET_METADATA = Capability.OPTIONAL_RESULTSET_METADATA
CLIENT_ZSTD_COMPRESSION_ALGORITHM = Capability.ZSTD_COMPRESSION_ALGORITHM
CLIENT_QUERY_ATTRIBUTES = Capability.QUERY_ATTRIBUTES
CLIENT_MULTI_FACTOR_AUTHENTICATION = Capability.MULTI_FACTOR_AUTHENTICATION
CLIENT_CAPABILITY_EXTENSION = Capability.CAPABILITY_EXTENSION
CLIENT_SSL_VERIFY_SERVER_CERT = Capability.SSL_VERIFY_SERVER_CERT
CLIENT_REMEMBER_OPTIONS = Capability.REMEMBER_OPTIONS
MARIADB_CLIENT_PROGRESS = Capability.MARIADB_CLIENT_PROGRESS
MARIADB_CLIENT_COM_MULTI = Capability.MARIADB_CLIENT_COM_MULTI
MARIADB_CLIENT_STMT_BULK_OPERATIONS = Capability.MARIADB_CLIENT_STMT_BULK_OPERATIONS
MARIADB_CLIENT_EXTENDED_TYPE_INFO = Capability.MARIADB_CLIENT_EXTENDED_TYPE_INFO
MARIADB_CLIENT_EXTENDED_METADATA = Capability.MARIADB_CLIENT_EXTENDED_TYPE_INFO
MARIADB_CLIENT_CACHE_METADATA = Capability.MARIADB_CLIENT_CACHE_METADATA
MARIADB_CLIENT_BULK_UNIT_RESULTS = Capability.MARIADB_CLIENT_BULK_UNIT_RESULTS

MARIADB_CAPABILITIES_MASK = 0xFFFF_FFFF_0000_0000  # the bits carried in the reserved bytes


# --------------------------------------------------------------------------------------------
# Commands


class Command(IntEnum):
    """The first byte of every packet a client sends in the command phase (`COM_*`)."""

    SLEEP = 0x00  # internal
    QUIT = 0x01
    INIT_DB = 0x02
    QUERY = 0x03
    FIELD_LIST = 0x04  # deprecated in MySQL 5.7, gone in 9.0
    CREATE_DB = 0x05  # deprecated
    DROP_DB = 0x06  # deprecated
    REFRESH = 0x07  # deprecated
    SHUTDOWN = 0x08  # deprecated
    STATISTICS = 0x09
    PROCESS_INFO = 0x0A  # deprecated
    CONNECT = 0x0B  # internal
    PROCESS_KILL = 0x0C  # deprecated in favour of KILL, still sent by old clients
    DEBUG = 0x0D
    PING = 0x0E
    TIME = 0x0F  # internal
    DELAYED_INSERT = 0x10  # internal
    CHANGE_USER = 0x11
    BINLOG_DUMP = 0x12
    TABLE_DUMP = 0x13
    CONNECT_OUT = 0x14
    REGISTER_SLAVE = 0x15
    STMT_PREPARE = 0x16
    STMT_EXECUTE = 0x17
    STMT_SEND_LONG_DATA = 0x18
    STMT_CLOSE = 0x19
    STMT_RESET = 0x1A
    SET_OPTION = 0x1B
    STMT_FETCH = 0x1C
    DAEMON = 0x1D  # internal
    BINLOG_DUMP_GTID = 0x1E  # MySQL; COM_UNIMPLEMENTED in MariaDB
    RESET_CONNECTION = 0x1F
    CLONE = 0x20  # MySQL 8
    SUBSCRIBE_GROUP_REPLICATION_STREAM = 0x21  # MySQL 8
    # MariaDB
    STMT_BULK_EXECUTE = 0xFA
    SLAVE_WORKER = 0xFB  # internal
    SLAVE_IO = 0xFC  # internal
    SLAVE_SQL = 0xFD  # internal
    MULTI = 0xFE  # removed experiment (COM_RESERVED_1)


class SetOption(IntEnum):
    """The int<2> argument of COM_SET_OPTION (`enum_mysql_set_option`)."""

    MULTI_STATEMENTS_ON = 0
    MULTI_STATEMENTS_OFF = 1


# --------------------------------------------------------------------------------------------
# Status flags (OK and EOF packets)


class ServerStatus(IntFlag):
    """`SERVER_STATUS_*` bits of OK / EOF packets and of the handshake."""

    IN_TRANS = 1 << 0
    AUTOCOMMIT = 1 << 1
    MORE_RESULTS_EXISTS = 1 << 3  # another result set (or OK) follows: multi-statements, CALL
    QUERY_NO_GOOD_INDEX_USED = 1 << 4
    QUERY_NO_INDEX_USED = 1 << 5
    CURSOR_EXISTS = 1 << 6  # COM_STMT_EXECUTE opened a cursor: rows come by COM_STMT_FETCH
    LAST_ROW_SENT = 1 << 7  # COM_STMT_FETCH: the cursor is exhausted
    DB_DROPPED = 1 << 8
    NO_BACKSLASH_ESCAPES = 1 << 9
    METADATA_CHANGED = 1 << 10
    QUERY_WAS_SLOW = 1 << 11
    PS_OUT_PARAMS = 1 << 12  # this result set holds OUT parameters of a CALL
    IN_TRANS_READONLY = 1 << 13
    SESSION_STATE_CHANGED = 1 << 14  # OK carries session state information (SESSION_TRACK)
    ANSI_QUOTES = 1 << 15  # MariaDB


class SessionTrack(IntEnum):
    """Types of the entries of the session state information in an OK packet."""

    SYSTEM_VARIABLES = 0  # data: lenenc name, lenenc value
    SCHEMA = 1  # data: lenenc schema name (USE, COM_INIT_DB, CHANGE USER)
    STATE_CHANGE = 2  # data: lenenc "1"
    GTIDS = 3  # data: int<1> encoding specification, lenenc GTID set
    TRANSACTION_CHARACTERISTICS = 4  # data: lenenc SQL text
    TRANSACTION_STATE = 5  # data: lenenc 8-character state string


# --------------------------------------------------------------------------------------------
# Column metadata


class FieldType(IntEnum):
    """`enum_field_types`: the type byte of ColumnDefinition41 and of binary parameters."""

    DECIMAL = 0
    TINY = 1
    SHORT = 2
    LONG = 3
    FLOAT = 4
    DOUBLE = 5
    NULL = 6
    TIMESTAMP = 7
    LONGLONG = 8
    INT24 = 9
    DATE = 10
    TIME = 11
    DATETIME = 12
    YEAR = 13
    NEWDATE = 14  # internal
    VARCHAR = 15
    BIT = 16
    TIMESTAMP2 = 17  # internal
    DATETIME2 = 18  # internal
    TIME2 = 19  # internal
    TYPED_ARRAY = 20  # MySQL replication only
    VECTOR = 242  # MySQL 9
    INVALID = 243  # MySQL internal
    BOOL = 244  # MySQL internal placeholder
    JSON = 245  # MySQL; MariaDB sends JSON as a string type (with extended metadata "json")
    NEWDECIMAL = 246
    ENUM = 247
    SET = 248
    TINY_BLOB = 249
    MEDIUM_BLOB = 250
    LONG_BLOB = 251
    BLOB = 252
    VAR_STRING = 253
    STRING = 254
    GEOMETRY = 255


class FieldFlag(IntFlag):
    """Column definition flags (int<2> on the wire)."""

    NOT_NULL = 1 << 0
    PRI_KEY = 1 << 1
    UNIQUE_KEY = 1 << 2
    MULTIPLE_KEY = 1 << 3
    BLOB = 1 << 4
    UNSIGNED = 1 << 5
    ZEROFILL = 1 << 6
    BINARY = 1 << 7
    ENUM = 1 << 8
    AUTO_INCREMENT = 1 << 9
    TIMESTAMP = 1 << 10
    SET = 1 << 11
    NO_DEFAULT_VALUE = 1 << 12
    ON_UPDATE_NOW = 1 << 13
    PART_KEY = 1 << 14
    NUM = 1 << 15


PARAM_UNSIGNED = 0x80  # flag byte of a COM_STMT_EXECUTE parameter type: unsigned integer
PARAM_INDICATOR = 0x40  # MariaDB bulk execution: an indicator byte precedes the value


class MariaDBFieldAttr(IntEnum):
    """Keys of MariaDB's extended column metadata (MARIADB_CLIENT_EXTENDED_TYPE_INFO)."""

    DATA_TYPE_NAME = 0  # e.g. "json", "uuid", "inet6", "point"
    FORMAT_NAME = 1  # e.g. "json"


class ResultsetMetadata(IntEnum):
    """The "metadata follows" byte (MySQL OPTIONAL_RESULTSET_METADATA, MariaDB CACHE_METADATA)."""

    NONE = 0
    FULL = 1


class CursorType(IntFlag):
    """The flags byte of COM_STMT_EXECUTE (`enum_cursor_type`)."""

    NO_CURSOR = 0
    READ_ONLY = 1 << 0
    FOR_UPDATE = 1 << 1
    SCROLLABLE = 1 << 2
    PARAMETER_COUNT_AVAILABLE = 1 << 3  # MySQL 8.0.26+, with CLIENT_QUERY_ATTRIBUTES


# --------------------------------------------------------------------------------------------
# Authentication exchange bytes

AUTH_MORE_DATA = 0x01  # header of AuthMoreData
AUTH_NEXT_FACTOR = 0x02  # header of AuthNextFactor (MySQL multi-factor authentication)
AUTH_SWITCH_REQUEST = 0xFE  # header of AuthSwitchRequest
LOCAL_INFILE_HEADER = 0xFB  # header of the LOCAL INFILE request
OK_HEADER = 0x00
EOF_HEADER = 0xFE
ERR_HEADER = 0xFF

CACHING_SHA2_REQUEST_PUBLIC_KEY = 0x02  # client -> server, alone in a packet
CACHING_SHA2_FAST_AUTH_SUCCESS = 0x03  # server -> client, in AuthMoreData
CACHING_SHA2_PERFORM_FULL_AUTHENTICATION = 0x04  # server -> client, in AuthMoreData

# --------------------------------------------------------------------------------------------
# Error numbers (server errors; SQLSTATE in ERROR_SQLSTATE)

ER_CON_COUNT_ERROR = 1040
ER_OUT_OF_RESOURCES = 1041
ER_BAD_HOST_ERROR = 1042
ER_HANDSHAKE_ERROR = 1043
ER_DBACCESS_DENIED_ERROR = 1044
ER_ACCESS_DENIED_ERROR = 1045
ER_NO_DB_ERROR = 1046
ER_UNKNOWN_COM_ERROR = 1047
ER_BAD_DB_ERROR = 1049
ER_SERVER_SHUTDOWN = 1053
ER_PARSE_ERROR = 1064
ER_EMPTY_QUERY = 1065
ER_NO_SUCH_THREAD = 1094
ER_KILL_DENIED_ERROR = 1095
ER_UNKNOWN_ERROR = 1105
ER_TABLEACCESS_DENIED_ERROR = 1142
ER_COLUMNACCESS_DENIED_ERROR = 1143
ER_NOT_ALLOWED_COMMAND = 1148  # e.g. LOAD DATA LOCAL INFILE refused
ER_NET_PACKET_TOO_LARGE = 1153
ER_NET_READ_ERROR_FROM_PIPE = 1154
ER_NET_FCNTL_ERROR = 1155
ER_NET_PACKETS_OUT_OF_ORDER = 1156
ER_NET_UNCOMPRESS_ERROR = 1157
ER_NET_READ_ERROR = 1158
ER_NET_READ_INTERRUPTED = 1159
ER_NET_ERROR_ON_WRITE = 1160
ER_NET_WRITE_INTERRUPTED = 1161
ER_LOCK_WAIT_TIMEOUT = 1205
ER_SPECIFIC_ACCESS_DENIED_ERROR = 1227
ER_UNKNOWN_STMT_HANDLER = 1243
ER_NOT_SUPPORTED_AUTH_MODE = 1251
ER_OPTION_PREVENTS_STATEMENT = 1290
ER_UNSUPPORTED_PS = 1295
ER_QUERY_INTERRUPTED = 1317
ER_ACCESS_DENIED_NO_PASSWORD_ERROR = 1698
ER_MALFORMED_PACKET = 1835  # MySQL only
ER_CONNECTION_KILLED = 1927  # MariaDB
ER_SECURE_TRANSPORT_REQUIRED = 3159  # MySQL; MariaDB uses ER_OPTION_PREVENTS_STATEMENT

PROGRESS_REPORT_ERRNO = 0xFFFF  # MariaDB: an ERR-shaped progress report, not an error

ERROR_SQLSTATE: dict[int, str] = {
    ER_CON_COUNT_ERROR: "08004",
    ER_OUT_OF_RESOURCES: "HY000",
    ER_BAD_HOST_ERROR: "08S01",
    ER_HANDSHAKE_ERROR: "08S01",
    ER_DBACCESS_DENIED_ERROR: "42000",
    ER_ACCESS_DENIED_ERROR: "28000",
    ER_NO_DB_ERROR: "3D000",
    ER_UNKNOWN_COM_ERROR: "08S01",
    ER_BAD_DB_ERROR: "42000",
    ER_SERVER_SHUTDOWN: "08S01",
    ER_PARSE_ERROR: "42000",
    ER_EMPTY_QUERY: "42000",
    ER_NO_SUCH_THREAD: "HY000",
    ER_KILL_DENIED_ERROR: "HY000",
    ER_UNKNOWN_ERROR: "HY000",
    ER_TABLEACCESS_DENIED_ERROR: "42000",
    ER_COLUMNACCESS_DENIED_ERROR: "42000",
    ER_NOT_ALLOWED_COMMAND: "42000",
    ER_NET_PACKET_TOO_LARGE: "08S01",
    ER_NET_READ_ERROR_FROM_PIPE: "08S01",
    ER_NET_FCNTL_ERROR: "08S01",
    ER_NET_PACKETS_OUT_OF_ORDER: "08S01",
    ER_NET_UNCOMPRESS_ERROR: "08S01",
    ER_NET_READ_ERROR: "08S01",
    ER_NET_READ_INTERRUPTED: "08S01",
    ER_NET_ERROR_ON_WRITE: "08S01",
    ER_NET_WRITE_INTERRUPTED: "08S01",
    ER_LOCK_WAIT_TIMEOUT: "HY000",
    ER_SPECIFIC_ACCESS_DENIED_ERROR: "42000",
    ER_UNKNOWN_STMT_HANDLER: "HY000",
    ER_NOT_SUPPORTED_AUTH_MODE: "08004",
    ER_OPTION_PREVENTS_STATEMENT: "HY000",
    ER_UNSUPPORTED_PS: "HY000",
    ER_QUERY_INTERRUPTED: "70100",
    ER_ACCESS_DENIED_NO_PASSWORD_ERROR: "28000",
    ER_MALFORMED_PACKET: "HY000",
    ER_CONNECTION_KILLED: "70100",
    ER_SECURE_TRANSPORT_REQUIRED: "HY000",
}


def sqlstate_of(errno: int, default: str = "HY000") -> str:
    """The SQLSTATE the server pairs with `errno` (HY000, "general error", when unknown)."""
    return ERROR_SQLSTATE.get(errno, default)


# --------------------------------------------------------------------------------------------
# Collations (the 1-byte "character set" of the handshake and of column definitions)


class Charset(IntEnum):
    """Common collation ids. The handshake carries only the low 8 bits of the server default."""

    BIG5_CHINESE_CI = 1
    LATIN1_SWEDISH_CI = 8
    ASCII_GENERAL_CI = 11
    UTF8MB3_GENERAL_CI = 33
    UTF8MB4_GENERAL_CI = 45
    UTF8MB4_BIN = 46
    LATIN1_BIN = 47
    BINARY = 63
    UTF8MB3_BIN = 83
    UTF8MB4_UNICODE_CI = 224
    UTF8MB4_0900_AI_CI = 255  # MySQL 8 default


LATIN1 = Charset.LATIN1_SWEDISH_CI
UTF8MB4_GENERAL_CI = Charset.UTF8MB4_GENERAL_CI
UTF8MB4_0900_AI_CI = Charset.UTF8MB4_0900_AI_CI
BINARY_CHARSET = Charset.BINARY

MAX_PACKET_CHUNK = 0xFFFFFF  # largest payload of one wire packet; longer payloads are split
