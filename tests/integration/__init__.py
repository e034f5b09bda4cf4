"""Integration tests: real servers, real drivers, the real gateway process."""
