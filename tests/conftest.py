"""Session-wide test setup."""

# Hypothesis' pytest plugin imports hypothesis lazily in its terminal summary; on CPython 3.11.7
# compiling it that late can raise "AST constructor recursion depth mismatch" (a CPython bug).
# Importing it at collection time, in a clean state, avoids that.
import hypothesis  # noqa: F401
import pytest

from tests.support.postgres import pg_server_url


@pytest.fixture(scope="session")
def pg_server():
    """The PostgreSQL server URL for this session (skips, or fails under CI=true, without one)."""
    yield from pg_server_url()
