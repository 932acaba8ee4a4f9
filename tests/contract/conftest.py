"""Fixtures and set-up for the contract tests."""

import pytest

# The shared target contract lives outside a test module: its asserts get
# pytest's explanations only when registered before it is imported.
pytest.register_assert_rewrite("target_contract")
