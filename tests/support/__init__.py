"""Helpers for tests that run real servers: a private PostgreSQL cluster, the gateway as a
subprocess, test certificates and a raw PostgreSQL wire client (nothing here is a mock)."""
