"""Sphinx configuration for the binfmt documentation.

Build (warnings are errors, every cross-reference must resolve):

    sphinx-build -W --keep-going -n -b html docs docs/_build/html
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Optional

# Import the package from this checkout, installed or not.
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

project = "binfmt"
author = "the binfmt authors"
copyright = "the binfmt authors"

extensions = ["sphinx.ext.autodoc"]

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_theme_options = {
    "description": "Linux binfmt_misc, modelled exactly as the kernel behaves",
    "fixed_sidebar": True,
}

# Source order keeps each module's story in the order its author wrote it.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Show ``Optional[KernelRules]``, not ``~typing.Optional[binfmt.kernel.KernelRules]``.
python_use_unqualified_type_names = True

nitpicky = True
# Only names from the standard library and third-party packages belong here:
# without intersphinx (the build runs offline) they have no target to link to.
nitpick_ignore = [
    ("py:class", "attrs.Attribute"),  # type hints in binfmt.qemu validators
    ("py:func", "attrs.evolve"),  # KernelRules docstring
    ("py:class", "argparse.ArgumentParser"),  # binfmt.cli's parsers
    ("py:func", "json.loads"),  # binfmt.output
    ("py:mod", "pickle"),  # binfmt.errors
    # Type aliases, shown by name in signatures (their definitions are documented).
    ("py:class", "OptionNames"),
    ("py:class", "Handler"),
]
# The standard library, which only intersphinx could link to.
nitpick_ignore_regex = [
    ("py:class", r"(collections\.abc|contextlib|os|pathlib|struct)\.\w+"),
    ("py:mod", r"subprocess"),  # binfmt.verify's docstring
]


# -- references to names a module imports -------------------------------------
#
# Docstrings name things the way the code sees them: ``InvalidEntry`` inside
# binfmt.entry (which imports it from binfmt.errors), ``binfmt.BinfmtMisc``
# (the package re-export of binfmt.procfs.BinfmtMisc). Sphinx only knows the
# place each object is documented, so an unresolved reference is looked up as
# Python would look it up, from the module it is written in, and sent to the
# object's canonical ``__module__.__qualname__``. Only objects of this package
# are resolved this way; anything else stays a warning.


def _canonical(dotted: str) -> Optional[str]:
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        path = obj.__name__
        for attr in parts[split:]:
            try:
                obj = getattr(obj, attr)
            except AttributeError:
                return None
            module = getattr(obj, "__module__", None)
            qualname = getattr(obj, "__qualname__", None)
            if isinstance(module, str) and isinstance(qualname, str):
                path = f"{module}.{qualname}"
            else:  # a property, a constant: named by where it was found
                path = f"{path}.{attr}"
        return path
    return None


def _resolve_imported_name(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    scopes = [node.get("py:module"), None]
    for scope in scopes:
        dotted = f"{scope}.{target}" if scope else target
        canonical = _canonical(dotted)
        if canonical and canonical != dotted and canonical.startswith("binfmt."):
            domain = env.get_domain("py")
            return domain.resolve_xref(
                env, node["refdoc"], app.builder, node["reftype"], canonical, node, contnode
            )
    return None


def setup(app: Any) -> None:
    app.connect("missing-reference", _resolve_imported_name)
