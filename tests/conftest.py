"""Session-wide test setup."""

# Hypothesis' pytest plugin imports hypothesis lazily in its terminal summary; on CPython 3.11.7
# compiling it that late can raise "AST constructor recursion depth mismatch" (a CPython bug).
# Importing it at collection time, in a clean state, avoids that.
from collections.abc import AsyncIterator

import hypothesis  # noqa: F401
import pytest

from tests.support.databases import BACKENDS, DatabaseBackend, database_backend_for
from tests.support.postgres import pg_server_url


@pytest.fixture(scope="session")
def pg_server():
    """The PostgreSQL server URL for this session (skips, or fails under CI=true, without one)."""
    yield from pg_server_url()


@pytest.fixture(scope="session", params=BACKENDS)
def database_backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> DatabaseBackend:
    """Each test using it runs once on SQLite and once on PostgreSQL (tests/support/databases.py)."""
    return database_backend_for(request, tmp_path_factory)


@pytest.fixture
async def db_url(database_backend: DatabaseBackend) -> AsyncIterator[str]:
    """A fresh, empty database of each kind for a test of the whole engine (its DATABASE_URL)."""
    async with database_backend.fresh_url() as url:
        yield url
