"""Integration tests for the MySQL / MariaDB gateway: the system MariaDB, real drivers, the real gateway."""
