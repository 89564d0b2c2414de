"""Coproc's wire protocols: hooks (ZeroMQ), control (socketpair) and sd_notify."""
