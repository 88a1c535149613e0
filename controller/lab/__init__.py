"""Rigs for one machine: local broker, daemon and controller processes, the emulated testbed, the
demo. Only the CLI, the benchmarks and the tests import this; boards need not ship it."""
