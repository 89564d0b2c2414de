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
   the next set's `import helpers` finds its own file;
4. except vendored libraries: a package found in a folder the plugin put on
   `sys.path` (`vendor/`) stays loaded under its own name, once for the whole
   worker, like an installed library (`worker.vendoring` says how a second
   set shipping another copy is served).

Limits (documented for plugin authors):

* absolute imports of plugin-local modules must run while the plugin is
  imported (at module top level); an `import helpers` inside a hook body
  runs later, when the finder is gone; use `from . import helpers` there;
* a plugin-local module named like one already imported in the worker
  (`json.py`, `logging.py`, ...) is shadowed by that module, as in any Python
  program; a warning names it;
* plugin sets share one interpreter: third-party libraries (vendored or
  installed) and their global state are common to all plugins.  This is
  namespace hygiene, not a sandbox.
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

from worker.vendoring import REGISTRY, VendorGuard

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


def _package_dir(module: types.ModuleType) -> str | None:
    """A namespace package has no `__file__`: the first folder of its path."""
    path = getattr(module, "__path__", None)
    try:
        return next(iter(path)) if path is not None else None
    except (StopIteration, TypeError):
        return None


class PluginNamespace:
    """The private namespace of one plugin set: `coproc_plugins.<slug>`."""

    def __init__(self, key: str, directory: Path) -> None:
        self.directory = directory.resolve()
        digest = hashlib.sha256(f"{key}\0{self.directory}".encode()).hexdigest()[:10]
        self.package = f"{ROOT_PACKAGE}.{identifier(key)}_{digest}"
        #: Plugin-local modules by the name the plugin imported them under.
        self.local_modules: dict[str, types.ModuleType] = {}
        #: This set's own copies of vendored packages another set claimed first.
        self.private_vendored: dict[str, types.ModuleType] = {}

    def load(self, path: Path) -> types.ModuleType:
        """Import one plugin file of this set; any exception it raises propagates."""
        path = path.resolve()
        self._ensure_packages()
        name = f"{self.package}.{identifier(path.stem)}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {path}: not a Python source file")
        module = importlib.util.module_from_spec(spec)
        hidden = REGISTRY.hide_foreign(self.package)
        before = set(sys.modules)
        self._warn_shadowed(before)
        finders = [VendorGuard(REGISTRY, self.package, self.directory, hidden),
                   _LocalFinder(self.directory)]
        sys.meta_path[0:0] = finders
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        finally:
            for finder in finders:
                sys.meta_path.remove(finder)
            vendored = self._take_local_modules(before)
            self.private_vendored.update(REGISTRY.settle(self.package, vendored, hidden))
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

    def _take_local_modules(self, before: set[str]) -> list[str]:
        """Move modules imported from the plugin directory out of the global names;
        return the names of the vendored ones (left in place)."""
        prefix = self.package + "."
        vendored = []
        for name in [n for n in sys.modules if n not in before]:
            if name.startswith(prefix) or name == self.package:
                continue
            module = sys.modules[name]
            file = getattr(module, "__file__", None) or _package_dir(module)
            if file is None or not self.owns(file):
                continue  # stdlib or third party, imported for the first time: keep it
            if not self._is_local(name, file):
                vendored.append(name)
                continue
            del sys.modules[name]
            self.local_modules[name] = module
            sys.modules.setdefault(prefix + name, module)
        return vendored

    def _is_local(self, name: str, file: str) -> bool:
        """Whether `name` was found in the plugin directory itself (not in a folder
        the plugin put on `sys.path`): its top-level name is a file or folder there."""
        try:
            first = Path(file).resolve().relative_to(self.directory).parts[0]
        except (OSError, ValueError, IndexError):
            return True
        return first.split(".")[0] == name.partition(".")[0]

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
