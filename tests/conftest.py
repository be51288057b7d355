"""Session-wide test setup."""

# Hypothesis' pytest plugin imports hypothesis lazily in its terminal summary; on CPython 3.11.7
# compiling it that late can raise "AST constructor recursion depth mismatch" (a CPython bug).
# Importing it at collection time, in a clean state, avoids that.
import hypothesis  # noqa: F401
