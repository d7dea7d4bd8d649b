"""Test configuration shared by unit, functional and perf tests."""

pytest_plugins = ["harness.pytest_plugin"]
