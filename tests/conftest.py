"""Shared fixtures. The project's own tests use the plugin it ships to users."""

from __future__ import annotations

from hypothesis import settings

pytest_plugins = ["binfmt.testing"]

# No timing thresholds in tests: hypothesis' per-example deadline would turn a
# loaded CI machine into failures. A hang is caught by pytest-timeout instead.
settings.register_profile("binfmt", deadline=None)
settings.load_profile("binfmt")
