"""A private module namespace per plugin set (one API's plugin directory).

Two APIs may both ship `middleware.py` defining `MyPreHook`, and each may
`import helpers` from a `helpers.py` beside it.  Python has one global
`sys.modules`, so plugin files cannot simply be put on `sys.path`.  Instead:

1. every plugin set gets a synthetic package `coproc_plugins.<slug>` whose
   `__path__` is the plugin directory; a plugin file is imported as
   `coproc_plugins.<slug>.<stem>`, so relative imports (`from . import x`)
   resolve inside the set, at import time and later;
2. while one file executes, a finder placed first on `sys.meta_path` resolves
   top-level names that exist in the plugin directory (`import helpers`,
   `from utils.text import x`) from that directory, the way a script's own
   directory comes first on `sys.path`;
3. afterwards, every module that came from the directory is taken out of the
   global names (`helpers`) and kept as `coproc_plugins.<slug>.helpers`, so
   the next set's `import helpers` finds its own file.

Limits (documented for plugin authors):

* absolute imports of plugin-local modules must run while the plugin is
  imported (at module top level); an `import helpers` inside a hook body
  runs later, when the finder is gone; use `from . import helpers` there;
* a plugin-local module named like one already imported in the worker
  (`json.py`, `logging.py`, ...) is shadowed by that module, as in any Python
  program; a warning names it;
* plugin sets share one interpreter: third-party libraries and their global
  state are common to all plugins.  This is namespace hygiene, not a sandbox.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import re
import sys
import types
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ROOT_PACKAGE", "PluginNamespace", "identifier"]

log = logging.getLogger("worker.isolation")

#: Parent package of every plugin set's synthetic package.
ROOT_PACKAGE = "coproc_plugins"


def identifier(text: str, limit: int = 40) -> str:
    """`text` as a Python identifier (for module names built from ids and file names)."""
    ident = re.sub(r"\W", "_", text)[:limit] or "_"
    return f"_{ident}" if ident[0].isdigit() else ident


class _LocalFinder(importlib.abc.MetaPathFinder):
    """Resolves top-level imports from one plugin directory, first."""

    def __init__(self, directory: Path) -> None:
        self.directory = str(directory)

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if path is not None or "." in fullname:
            return None  # submodules resolve through their parent's __path__
        spec = importlib.machinery.PathFinder.find_spec(fullname, [self.directory])
        # A bare directory would make a namespace package that hides real packages.
        if spec is None or spec.loader is None:
            return None
        return spec


class PluginNamespace:
    """The private namespace of one plugin set: `coproc_plugins.<slug>`."""

    def __init__(self, key: str, directory: Path) -> None:
        self.directory = directory.resolve()
        digest = hashlib.sha256(f"{key}\0{self.directory}".encode()).hexdigest()[:10]
        self.package = f"{ROOT_PACKAGE}.{identifier(key)}_{digest}"
        #: Plugin-local modules by the name the plugin imported them under.
        self.local_modules: dict[str, types.ModuleType] = {}

    def load(self, path: Path) -> types.ModuleType:
        """Import one plugin file of this set; any exception it raises propagates."""
        path = path.resolve()
        self._ensure_packages()
        name = f"{self.package}.{identifier(path.stem)}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {path}: not a Python source file")
        module = importlib.util.module_from_spec(spec)
        before = set(sys.modules)
        self._warn_shadowed(before)
        finder = _LocalFinder(self.directory)
        sys.meta_path.insert(0, finder)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        finally:
            sys.meta_path.remove(finder)
            self._take_local_modules(before)
        return module

    def owns(self, filename: str | None) -> bool:
        """Whether `filename` lies inside this set's directory."""
        if not filename:
            return False
        try:
            return Path(filename).resolve().is_relative_to(self.directory)
        except (OSError, ValueError):
            return False

    def _ensure_packages(self) -> None:
        if ROOT_PACKAGE not in sys.modules:
            root = types.ModuleType(ROOT_PACKAGE, "Plugin sets loaded by the Coproc worker.")
            root.__path__ = []
            sys.modules[ROOT_PACKAGE] = root
        if self.package not in sys.modules:
            spec = importlib.machinery.ModuleSpec(self.package, None, is_package=True)
            spec.submodule_search_locations = [str(self.directory)]
            package = importlib.util.module_from_spec(spec)
            package.__path__ = [str(self.directory)]
            sys.modules[self.package] = package

    def _take_local_modules(self, before: set[str]) -> None:
        """Move modules imported from the plugin directory out of the global names."""
        prefix = self.package + "."
        for name in [n for n in sys.modules if n not in before]:
            if name.startswith(prefix) or name == self.package:
                continue
            module = sys.modules[name]
            if not self.owns(getattr(module, "__file__", None)):
                continue  # stdlib or third party, imported for the first time: keep it
            del sys.modules[name]
            self.local_modules[name] = module
            sys.modules.setdefault(prefix + name, module)

    def _warn_shadowed(self, loaded: set[str]) -> None:
        try:
            entries = list(self.directory.iterdir())
        except OSError:
            return
        for entry in entries:
            name = entry.stem if entry.suffix == ".py" else entry.name
            if entry.suffix not in (".py", "") or name not in loaded:
                continue
            module = sys.modules.get(name)
            if module is not None and not self.owns(getattr(module, "__file__", None)):
                log.warning("plugin-local module %s shadows the already imported module "
                            "of that name, which the plugin will get instead", entry)
