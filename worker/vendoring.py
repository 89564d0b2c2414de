"""Libraries a plugin set ships itself (`vendor/` on `sys.path`): loaded once, shared.

Tyk plugin READMEs tell authors to `pip install pyjwt[crypto] -t vendor/` and
put that folder on `sys.path` from the plugin.  Such a *vendored* package must
stay in `sys.modules` after the plugin is imported: libraries import their own
submodules lazily (cryptography does, on first use), and a second copy of a
package has its own classes, so its `isinstance` checks fail.

The first plugin set that imports a vendored top-level name *claims* it: that
copy is the process's, as any installed library would be.  While another set
is imported, the claimed names are taken out of `sys.modules` and
`VendorGuard` decides, for each one the set imports:

* the set resolves it to the same files (it uses the claimer's copy, or both
  sets are one directory) or to a copy outside its directory (an installed
  one): the claimed copy is reused, so nothing is loaded twice;
* the set ships its own copy of a pure-Python package: that copy is imported
  for the set and kept out of the global names afterwards (the set's modules
  hold references to it; see the limit below);
* either copy contains a native extension: one process can load only one
  build of it, so the claimed copy is reused and one warning line says so.

Limit: a second set's own pure-Python copy serves the imports made while the
set is imported; an import the library makes only later, inside a call,
resolves through the global name, i.e. the claimed copy.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import sys
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["REGISTRY", "Claim", "VendorGuard", "VendorRegistry"]

log = logging.getLogger("worker.isolation")

_NATIVE_SUFFIXES = (*tuple(importlib.machinery.EXTENSION_SUFFIXES), ".so", ".pyd")
#: Files looked at when checking a package directory for native code (bounds the walk).
_NATIVE_SCAN_LIMIT = 20_000


@dataclass(slots=True)
class Claim:
    """One vendored top-level package (or module) and the set that loaded it."""

    name: str
    owner: str  # the claiming set's package name
    location: str  # the package's directory or the module's file
    modules: dict[str, types.ModuleType] = field(default_factory=dict)

    def native(self) -> bool:
        return any(isinstance(getattr(m, "__loader__", None),
                              importlib.machinery.ExtensionFileLoader)
                   for m in self.modules.values()) or has_native_code(self.location)


def has_native_code(location: str) -> bool:
    """Whether a module file or package directory holds a compiled extension."""
    if location.endswith(_NATIVE_SUFFIXES):
        return True
    if not os.path.isdir(location):
        return False
    seen = 0
    for _root, _dirs, files in os.walk(location):
        for name in files:
            seen += 1
            if name.endswith(_NATIVE_SUFFIXES):
                return True
        if seen > _NATIVE_SCAN_LIMIT:
            break
    return False


def spec_location(spec: importlib.machinery.ModuleSpec) -> str:
    """The directory of a package or the file of a module, as a resolved path."""
    if spec.submodule_search_locations:
        return str(Path(next(iter(spec.submodule_search_locations))).resolve())
    return str(Path(spec.origin).resolve()) if spec.origin else ""


def module_location(module: types.ModuleType) -> str:
    path = getattr(module, "__path__", None)
    if path:
        return str(Path(next(iter(path))).resolve())
    file = getattr(module, "__file__", None)
    return str(Path(file).resolve()) if file else ""


def describe(location: str) -> str:
    """`location`, with the version its `*.dist-info` beside it records, if any."""
    parent, stem = Path(location).parent, Path(location).name.split(".")[0].lower()
    try:  # distribution names differ from module names in case and "-"/"_"
        infos = sorted(p for p in parent.glob("*-*.dist-info")
                       if p.name.split("-")[0].lower().replace("-", "_") == stem)
    except OSError:
        infos = []
    if not infos:
        return location
    version = infos[0].name.removesuffix(".dist-info").split("-", 1)[1]
    return f"{version} at {location}"


class VendorRegistry:
    """Vendored top-level names of the whole worker, by the set that claimed them."""

    def __init__(self) -> None:
        self.claims: dict[str, Claim] = {}

    def hide_foreign(self, owner: str) -> dict[str, types.ModuleType]:
        """Take other sets' vendored modules out of `sys.modules`; return them."""
        hidden: dict[str, types.ModuleType] = {}
        for claim in self.claims.values():
            if claim.owner == owner:
                continue
            for name in [n for n in sys.modules if n == claim.name
                         or n.startswith(claim.name + ".")]:
                hidden[name] = sys.modules.pop(name)
        return hidden

    def settle(self, owner: str, vendored: Iterable[str],
               hidden: dict[str, types.ModuleType]) -> dict[str, types.ModuleType]:
        """After a set's import: claim its new vendored names, keep its private copies
        out of the global names, put the hidden ones back; return the private copies."""
        private: dict[str, types.ModuleType] = {}
        for name in vendored:
            module = sys.modules.get(name)
            if module is None:
                continue
            top = name.partition(".")[0]
            claim = self.claims.get(top)
            if claim is None:
                top_module = sys.modules.get(top, module)
                claim = self.claims[top] = Claim(top, owner, module_location(top_module))
            if claim.owner == owner:
                claim.modules[name] = module
            else:
                private[name] = sys.modules.pop(name)
        sys.modules.update(hidden)
        return private


class VendorGuard(importlib.abc.MetaPathFinder):
    """While one set is imported: decides what a hidden, claimed name resolves to."""

    def __init__(self, registry: VendorRegistry, owner: str, directory: Path,
                 hidden: dict[str, types.ModuleType]) -> None:
        self.registry, self.owner, self.hidden = registry, owner, hidden
        self.directory = directory
        self.label = f"plugin set {directory}"

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if path is not None or "." in fullname or fullname not in self.hidden:
            return None
        claim = self.registry.claims[fullname]
        found = importlib.machinery.PathFinder.find_spec(fullname, sys.path)
        location = spec_location(found) if found is not None else ""
        # Only a copy inside this set's directory is its own; any other (the
        # claimer's, an installed one) is served by the copy already loaded.
        own = location != claim.location and Path(location).is_relative_to(self.directory)
        if own and not claim.native() and not has_native_code(location):
            return None  # the set's own pure-Python copy: the normal finders load it
        if own:
            log.warning("%s ships %s %s, but %s is a native extension already loaded at %s "
                        "by another plugin set: one process can load one build of it, so "
                        "this set uses the loaded one (vendor the same version in both, or "
                        "install it once for the worker)", self.label, fullname,
                        describe(location), fullname, describe(claim.location))
        self._restore(fullname)
        module = self.hidden[fullname]
        return importlib.machinery.ModuleSpec(fullname, _Existing(module),
                                              origin=getattr(module, "__file__", None))

    def _restore(self, top: str) -> None:
        for name, module in self.hidden.items():
            if name == top or name.startswith(top + "."):
                sys.modules.setdefault(name, module)


class _Existing(importlib.abc.Loader):
    """Hands the import system a module that is already loaded."""

    def __init__(self, module: types.ModuleType) -> None:
        self.module = module
        self.spec = getattr(module, "__spec__", None)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return self.module

    def exec_module(self, module: types.ModuleType) -> None:
        # The import system stamped our stand-in spec on it; give back the real one.
        module.__spec__ = self.spec


#: The worker's one registry (a process has one `sys.modules`).
REGISTRY = VendorRegistry()
