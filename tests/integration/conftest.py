"""Fixtures of the integration tests: ``backend`` runs a test once per task-store backend."""

from storebackends import backend  # noqa: F401 - a fixture, found by pytest through this import
