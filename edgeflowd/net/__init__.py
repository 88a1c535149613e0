"""Talking to a broker: settings (no network), the one paho wrapper, and an in-memory bus with
the same topic semantics for verify and the tests."""
