"""Compiled programs travel by their generated source: pickling without re-deriving.

A `CompiledProgram` is mostly plain data (the program, its graph, its forms) plus
functions made by ``exec`` of generated source (`_codegen._compile` / `_exec`, the one
compile path of all generated code). Such functions cannot be pickled by reference,
since no module holds them; so a compiled program is pickled by a pickler of its own
that writes, for each namespace of generated code, its source once, and for each
function, that namespace and the function's name. Unpickling compiles and runs each
source again (``exec`` of ``def`` statements: milliseconds) and takes the functions from
the new namespace; nothing is derived again (no SymPy work).

Unpickling is cached by a hash of the pickled bytes in each process: a Dask worker that
receives the same program for many chunks (or for many calls) builds it once.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import pickle
import threading
import types
from collections import OrderedDict
from typing import Any

from ._codegen import NUMPY_NAMESPACE, SCALAR_NAMESPACE, _compile, _exec, _Loader

__all__ = ["dumps", "loads"]

# The names generated code runs with (modules, or instances standing in for them).
_BASE = frozenset(NUMPY_NAMESPACE) | frozenset(SCALAR_NAMESPACE) | {"_rt"}
_CACHE_SIZE = 8  # compiled programs kept per process, most recently used
_cache: OrderedDict[str, Any] = OrderedDict()
_lock = threading.Lock()


class _Namespace:
    """A namespace of generated code, rebuilt on unpickling by running its source."""

    def __init__(self, source: str, module: str, base: dict[str, Any]):
        # The module name keeps the original's, so that tracebacks read the same.
        code = _compile(source, module.split(":", 1)[-1].rsplit(" ", 1)[0])
        self.names = _exec(code, base)

    def __setstate__(self, extras: dict[str, Any]) -> None:
        # Set after the object is memoized, so extras may refer back to this namespace
        # (the blocks' solvers hold functions of the code that reads them as `_blocks`).
        self.names.update(extras)


def _function(namespace: _Namespace, name: str) -> types.FunctionType:
    return namespace.names[name]


def _import(name: str) -> types.ModuleType:
    return importlib.import_module(name)


class _Pickler(pickle.Pickler):
    """Pickles generated functions by source and name, and modules by name."""

    def __init__(self, file: io.BytesIO):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._namespaces: dict[int, Any] = {}

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.ModuleType):
            return _import, (obj.__name__,)
        if isinstance(obj, types.FunctionType):
            loader = obj.__globals__.get("__loader__")
            if isinstance(loader, _Loader):
                if obj.__globals__.get(obj.__name__) is not obj:  # not found again by name
                    raise pickle.PicklingError(
                        f"generated function {obj.__qualname__!r} is not defined at the top "
                        "level of its source"
                    )
                return _function, (self._namespace(obj.__globals__), obj.__name__)
        return NotImplemented

    def _namespace(self, names: dict[str, Any]) -> Any:
        """One stand-in per namespace (pickle memoizes it: its source is written once)."""
        key = id(names)
        if key not in self._namespaces:
            self._namespaces[key] = _NamespaceStandIn(names)
        return self._namespaces[key]


class _NamespaceStandIn:
    """What a namespace of generated code pickles as: its source, the modules and classes
    it runs with (by reference), then everything else it holds (as state)."""

    def __init__(self, names: dict[str, Any]):
        self._names = names

    def __reduce__(self) -> tuple:
        names = self._names
        own = {
            k
            for k, v in names.items()
            if isinstance(v, types.FunctionType) and v.__globals__ is names
        }
        base, extras = {}, {}
        for k, v in names.items():
            if k.startswith("__") or k in own:
                continue
            plain = isinstance(v, (types.ModuleType, type)) or k in _BASE
            (base if plain else extras)[k] = v
        source = names["__loader__"].get_source(names["__name__"])
        return _Namespace, (source, names["__name__"], base), extras


def dumps(state: Any) -> bytes:
    """``state`` pickled, generated functions by their source."""
    buffer = io.BytesIO()
    _Pickler(buffer).dump(state)
    return buffer.getvalue()


def loads(blob: bytes, build: Any = None) -> Any:
    """The object `dumps` pickled (passed through ``build`` when given), made once per
    process for the same bytes and kept for the next call."""
    key = hashlib.sha256(blob).hexdigest()
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    obj = pickle.loads(blob)
    if build is not None:
        obj = build(obj)
    with _lock:
        _cache[key] = obj
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return obj
