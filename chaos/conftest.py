"""``make chaos`` shares the multi-host lab's fixtures with tests/test_multihost.py."""

from tests.test_multihost import lab, remote_database  # noqa: F401 - fixtures, registered by their import
