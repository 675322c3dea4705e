"""Typed reading of the manifest's JSON objects: every refusal names the file and the field's path.

``JsonObject(data, "deviation_from_fp32", file).number("max_abs_probs")`` returns a float or raises
``ManifestError("<file>: field 'deviation_from_fp32.max_abs_probs' must be a number, not str")``. Booleans are
never numbers here (JSON's ``true`` is not ``1``); ``null`` counts as absent.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["JsonObject", "ManifestError"]


class ManifestError(ValueError):
    """The model repository is missing, unreadable or inconsistent."""


_KINDS: dict[type, str] = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
                           dict: "an object", list: "a list"}


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "bool", int: "int", float: "float", str: "str", dict: "object", list: "list"}.get(
        type(value), type(value).__name__)


def _is(value: object, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


class JsonObject:
    """One JSON object of the manifest, read field by field."""

    def __init__(self, data: object, name: str, file: str) -> None:
        if not isinstance(data, dict):
            where = f"field {name!r} must be an object, not {_kind(data)}" if name else "not a JSON object"
            raise ManifestError(f"{file}: {where}")
        self._data: dict[str, Any] = data
        self._name = name
        self._file = file

    def path(self, key: str) -> str:
        """The field's full name: ``source.hub.revision``."""
        return f"{self._name}.{key}" if self._name else key

    def error(self, key: str, problem: str) -> ManifestError:
        return ManifestError(f"{self._file}: field {self.path(key)!r} {problem}")

    def names(self) -> Iterator[str]:
        """The object's keys, in file order."""
        return iter(self._data)

    def _get(self, key: str, kind: type, required: bool) -> Any:
        value = self._data.get(key)
        if value is None:
            if required:
                raise ManifestError(f"{self._file}: missing field {self.path(key)!r}")
            return None
        if not _is(value, kind):
            raise self.error(key, f"must be {_KINDS[kind]}, not {_kind(value)}")
        return value

    def text(self, key: str) -> str:
        value: str = self._get(key, str, True)
        return value

    def text_or_none(self, key: str) -> str | None:
        value: str | None = self._get(key, str, False)
        return value

    def integer(self, key: str) -> int:
        value: int = self._get(key, int, True)
        return value

    def integer_or_none(self, key: str) -> int | None:
        value: int | None = self._get(key, int, False)
        return value

    def number(self, key: str) -> float:
        return float(self._get(key, float, True))

    def number_or_none(self, key: str) -> float | None:
        value = self._get(key, float, False)
        return None if value is None else float(value)

    def flag_or_none(self, key: str) -> bool | None:
        value: bool | None = self._get(key, bool, False)
        return value

    def obj(self, key: str) -> JsonObject:
        return JsonObject(self._get(key, dict, True), self.path(key), self._file)

    def obj_or_none(self, key: str) -> JsonObject | None:
        value = self._get(key, dict, False)
        return None if value is None else JsonObject(value, self.path(key), self._file)

    def mapping_or_none(self, key: str) -> dict[str, Any] | None:
        """A free-form object (its values unchecked), e.g. the checkpoint's configuration."""
        value: dict[str, Any] | None = self._get(key, dict, False)
        return value

    def _items(self, values: list[Any], key: str, kind: type) -> list[Any]:
        for i, value in enumerate(values):
            if not _is(value, kind):
                raise self.error(f"{key}[{i}]", f"must be {_KINDS[kind]}, not {_kind(value)}")
        return values

    def texts(self, key: str) -> list[str]:
        return self._items(self._get(key, list, True), key, str)

    def texts_or_none(self, key: str) -> list[str] | None:
        values = self._get(key, list, False)
        return None if values is None else self._items(values, key, str)

    def integers_or_none(self, key: str) -> list[int] | None:
        values = self._get(key, list, False)
        return None if values is None else self._items(values, key, int)

    def objects(self, key: str) -> list[JsonObject]:
        values = self._items(self._get(key, list, True), key, dict)
        return [JsonObject(value, f"{self.path(key)}[{i}]", self._file) for i, value in enumerate(values)]
