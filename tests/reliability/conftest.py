"""The reliability tests reuse the colour-PNG training set of the CLI tests."""

from tests.cli.conftest import colour_data  # noqa: F401
