"""Shared fixtures. The project's own tests use the plugin it ships to users."""

from __future__ import annotations

pytest_plugins = ["binfmt.testing"]
