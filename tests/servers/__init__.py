"""Servers the tests run on loopback (real sockets)."""
