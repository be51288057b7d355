"""Loopback emulators of the five vendor APIs, for the demo, the tests and the benchmark."""
