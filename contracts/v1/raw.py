"""Reading raw Kubernetes JSON while remembering where every value came from.

Conversion is split in two pure steps: a converter *reshapes* the camelCase object into the
snake_case model input (structure only, through :class:`Src`, which type-checks containers), and
pydantic *validates* the values. To name the Kubernetes field in errors, the reshaped input is
built as a tree of :class:`Out` nodes that record the source path of every value; a pydantic
error location (a path in *our* model) is walked through that tree back to the Kubernetes path
(:func:`locate`). This keeps one source of truth for validation (the models) while errors still
read ``spec.ports[0].port``.

Recording paths costs more than the reshaping itself, and almost every object is valid, so a
converter runs the same reshaper twice at most: first over :class:`QuickSrc`, whose nodes
(:class:`QuickOut`) keep only the model input, and only when that input fails (a
:class:`RawError` or a pydantic error) again over :class:`Src` to name the field. A reshaper
never builds nodes by class name but asks its source (:meth:`Src.out`), so the one reshaper
serves both passes and they build the same input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeGuard


class RawError(Exception):
    """Structural problem at ``path``; converted to ContractError by the caller."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def is_object(value: object) -> TypeGuard[Mapping[str, Any]]:
    """A JSON object? (``dict`` first: an ABC ``isinstance`` costs more than the rest of a read.)"""
    return type(value) is dict or isinstance(value, Mapping)


_EMPTY: Mapping[str, Any] = {}


def _type_name(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


class Src:
    """A read-only view of one raw JSON object at a dotted path."""

    __slots__ = ("data", "path")

    def __init__(self, data: Mapping[str, Any], path: str = "") -> None:
        self.data = data
        self.path = path

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, default: Any = None) -> Any:
        value = self.data.get(key)
        return default if value is None else value

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def obj(self, key: str) -> Src:
        """The nested object at ``key`` (empty when absent)."""
        value = self.data.get(key)
        if value is None:
            return Src(_EMPTY, self.at(key))
        if not is_object(value):
            raise RawError(self.at(key), f"expected an object, got {_type_name(value)}")
        return Src(value, self.at(key))

    def items(self, key: str) -> list[Src]:
        """The list of objects at ``key`` (empty when absent)."""
        path = self.at(key)
        out: list[Src] = []
        for i, item in enumerate(self.values(key)):
            if not is_object(item):
                raise RawError(f"{path}[{i}]", f"expected an object, got {_type_name(item)}")
            out.append(Src(item, f"{path}[{i}]"))
        return out

    def values(self, key: str) -> list[Any]:
        """The list at ``key`` (empty when absent); items are not checked."""
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise RawError(self.at(key), f"expected a list, got {_type_name(value)}")
        return value

    def string(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None or isinstance(value, str):
            return value
        raise RawError(self.at(key), f"expected a string, got {_type_name(value)}")

    def out(self) -> Out:
        """A new model-input node for this object, recording paths as this view does."""
        return Out(self.path)


class QuickSrc(Src):
    """:class:`Src` without paths, for the first pass: its errors name no field (the converter
    reruns the reshaper over :class:`Src` for that) and its nodes are :class:`QuickOut`."""

    __slots__ = ()

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data
        self.path = ""

    def at(self, key: str) -> str:
        return ""

    def obj(self, key: str) -> Src:
        value = self.data.get(key)
        if value is None:
            return _QUICK_EMPTY
        if type(value) is dict or isinstance(value, Mapping):
            return QuickSrc(value)
        raise RawError("", f"expected an object, got {_type_name(value)}")

    def items(self, key: str) -> list[Src]:
        out: list[Src] = []
        for item in self.values(key):
            if type(item) is not dict and not isinstance(item, Mapping):
                raise RawError("", f"expected an object, got {_type_name(item)}")
            out.append(QuickSrc(item))
        return out

    def out(self) -> Out:
        return QuickOut()


_QUICK_EMPTY = QuickSrc(_EMPTY)


class Out:
    """Model input under construction plus the Kubernetes path of every field, and of every list
    item whose path is not simply ``<list path>[i]``.

    ``data`` is what pydantic validates: a tree of *plain* dicts and lists (pydantic-core takes
    its fast path only for exact ``dict``; a dict subclass here cost 2-3 us per object). The
    nested :class:`Out` nodes are kept beside it in ``nodes`` for :func:`locate`.
    """

    __slots__ = ("data", "item_paths", "nodes", "path", "paths")

    def __init__(self, path: str = "") -> None:
        self.data: dict[str, Any] = {}
        self.path = path
        self.paths: dict[str, str] = {}
        self.nodes: dict[str, Any] | None = None
        self.item_paths: dict[str, list[str]] | None = None

    def put(self, key: str, value: Any, path: str) -> None:
        """Set ``key``; None means "use the model default" and is left out. ``value`` may be an
        :class:`Out` or a list of them."""
        self.paths[key] = path
        if value is None or not self._store(key, value):
            return
        if self.nodes is None:
            self.nodes = {}
        self.nodes[key] = value

    def _store(self, key: str, value: Any) -> bool:
        """Set ``data[key]`` to ``value``'s plain data; True when ``value`` holds nodes (of this
        node's own class: a pass never mixes the two)."""
        node = type(self)
        if type(value) is node:
            self.data[key] = value.data
        elif type(value) is list and any(type(v) is node for v in value):
            self.data[key] = [v.data if type(v) is node else v for v in value]
        else:
            self.data[key] = value
            return False
        return True

    def take(self, key: str, src: Src, raw_key: str) -> None:
        value = src.data.get(raw_key)
        self.paths[key] = f"{src.path}.{raw_key}" if src.path else raw_key
        if value is not None:
            self.data[key] = value

    def put_items(self, key: str, items: list[tuple[Any, str]], path: str) -> None:
        """Set ``key`` to a list whose items come from scattered places (``(value, path)``)."""
        self.paths[key] = path
        if items:
            self.data[key] = [value for value, _ in items]
            if self.item_paths is None:
                self.item_paths = {}
            self.item_paths[key] = [item_path for _, item_path in items]

    def child(self, key: str) -> Any:
        """What was put at ``key``: the nested :class:`Out` (or list) if any, else the value."""
        if self.nodes is not None and key in self.nodes:
            return self.nodes[key]
        return self.data.get(key)

    def items_path(self, key: str) -> list[str] | None:
        return self.item_paths.get(key) if self.item_paths is not None else None


class QuickOut(Out):
    """:class:`Out` keeping only ``data`` (the same data): a :class:`QuickSrc` pass's nodes.
    It records no paths, so it never goes to :func:`locate`."""

    __slots__ = ()

    def __init__(self, path: str = "") -> None:
        self.data = {}

    def put(self, key: str, value: Any, path: str) -> None:
        if type(value) is list or type(value) is QuickOut:
            self._store(key, value)
        elif value is not None:  # a scalar or a raw mapping: stored as it is
            self.data[key] = value

    def take(self, key: str, src: Src, raw_key: str) -> None:
        value = src.data.get(raw_key)
        if value is not None:
            self.data[key] = value

    def put_items(self, key: str, items: list[tuple[Any, str]], path: str) -> None:
        if items:
            self.data[key] = [value for value, _ in items]


def locate(root: Out, loc: tuple[str | int, ...]) -> str:
    """Map a location in the model input back to the Kubernetes path it came from."""
    node: Any = root
    path = root.path
    items: list[str] | None = None
    rest = list(loc)
    while rest:
        part = rest[0]
        if isinstance(node, Out) and isinstance(part, str) and part in node.paths:
            path, items, node = node.paths[part], node.items_path(part), node.child(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            if isinstance(node, Out):
                path = node.path
            else:
                path = items[part] if items is not None else f"{path}[{part}]"
            items = None
        else:
            break
        rest.pop(0)
    mapping = node.data if isinstance(node, Out) else node
    for part in rest:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(mapping, Mapping) and part in mapping:
            path += f"[{part}]"
            break
    return path
