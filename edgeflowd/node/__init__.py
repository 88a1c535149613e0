"""The board: a sans-io node runtime (messages and ``now`` in, actions out), and the daemon that
carries its actions out with threads and a broker (config, weights, telemetry, systemd)."""
