"""Read a sweep spec file (TOML, JSON or YAML) and point errors at the line that holds a field or value.

``tomllib``, ``json`` and ``yaml`` give positions for syntax errors only, so later errors (a wrong
type, an unknown policy) are located by finding the field's ``key =`` / ``"key":`` / ``key:`` line,
then the value's first mention at or after it. The spec format is flat, so a key's first occurrence is
the right one. Duplicate keys, which ``json`` and ``yaml`` would let the last one win, are errors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from attrs import frozen

from icecache.core.errors import ConfigError


@frozen
class SpecSource:
    """A spec file's path (as given), its text and the parsed object."""

    path: str
    text: str
    data: dict[str, Any]

    @property
    def kind(self) -> str:
        """``json``, ``yaml`` or ``toml``, by the file's suffix."""
        return {".json": "json", ".yaml": "yaml", ".yml": "yaml"}.get(Path(self.path).suffix, "toml")

    def key_line(self, key: str) -> int | None:
        """1-based line of ``key = `` (TOML, a table header ``[key]`` too), ``"key":`` (JSON) or
        ``key:`` (YAML, quoted or not)."""
        k = re.escape(key)
        pattern = {"json": rf'"{k}"\s*:',
                   "yaml": rf'^[\s-]*(?:"{k}"|\'{k}\'|{k})\s*:(?:\s|$)|[{{,]\s*(?:"{k}"|\'{k}\'|{k})\s*:\s',
                   "toml": rf'^\s*(?:"{k}"|\'{k}\'|{k})\s*=|^\s*\[\s*(?:"{k}"|{k})\s*[.\]]|\.\s*"{k}"\s*\]',
                   }[self.kind]
        for no, line in enumerate(self.text.splitlines(), start=1):
            if re.search(pattern, line):
                return no
        return None

    def value_line(self, key: str, value: Any) -> int | None:
        """Line of ``value`` inside ``key``'s entry (arrays may span lines), else the key's line."""
        start = self.key_line(key)
        if start is None:
            return None
        if isinstance(value, str):
            pattern = re.escape(json.dumps(value)) + "|" + re.escape(f"'{value}'")
            if self.kind == "yaml":  # NOTE: YAML strings are often bare: `- niah_single`
                pattern += rf"|(?<![\w@:.-]){re.escape(value)}(?![\w@:.-])"
        else:
            pattern = rf"(?<![\w.]){re.escape(json.dumps(value))}(?![\w.])"
        for no, line in enumerate(self.text.splitlines()[start - 1:], start=start):
            if re.search(pattern, line):
                return no
        return start

    def error(self, message: str, key: str | None = None, value: Any = None) -> ConfigError:
        """``path:LINE: message`` (``path: message`` when the line cannot be found)."""
        line = None
        if key is not None:
            line = self.key_line(key) if value is None else self.value_line(key, value)
        return ConfigError(f"{self.path}:{line}: {message}" if line else f"{self.path}: {message}")


def read_spec(path: str) -> SpecSource:
    """Parse ``path`` (``.toml``, ``.json``, ``.yaml`` / ``.yml``); syntax errors and duplicate keys
    name their line."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"sweep spec {path!r} does not exist")
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {exc.start} is "
                          f"{raw[exc.start]:#04x})") from None
    if file.suffix == ".json":
        data = _read_json(path, text)
    elif file.suffix == ".toml":
        data = _read_toml(path, text)
    elif file.suffix in (".yaml", ".yml"):
        data = _read_yaml(path, text)
    else:
        raise ConfigError(f"sweep spec {path!r}: write it as .toml, .json or .yaml")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the spec must be an object of fields, got {type(data).__name__}")
    return SpecSource(path=path, text=text, data=data)


def _read_toml(path: str, text: str) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise ConfigError(f"{path}: reading TOML needs Python 3.11 or `pip install tomli`; "
                              "or write the spec as JSON") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # NOTE: the message ends "(at line N, column M)"; a duplicate key reads "Cannot overwrite a value"
        msg = str(exc)
        m = re.search(r"at line (\d+)", msg)
        where = f"{path}:{m.group(1)}" if m else path
        raise ConfigError(f"{where}: not valid TOML: {msg}") from None


def _read_json(path: str, text: str) -> Any:
    duplicates: list[str] = []

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                duplicates.append(key)
            out[key] = value
        return out

    try:
        data = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno})") from None
    if duplicates:
        key = duplicates[0]
        lines = [no for no, line in enumerate(text.splitlines(), start=1) if f'"{key}"' in line]
        where = f"{path}:{lines[1]}" if len(lines) > 1 else path
        first = f" (first on line {lines[0]})" if lines else ""
        raise ConfigError(f"{where}: duplicate key {key!r}{first}")
    return data


def _read_yaml(path: str, text: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise ConfigError(f"{path}: reading YAML needs `pip install pyyaml`; or write the spec as TOML "
                          "or JSON") from None

    class NoDuplicates(yaml.SafeLoader):
        """SafeLoader whose mappings refuse a key given twice (plain PyYAML keeps the last)."""

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                seen = first.get(key)
            except TypeError:
                raise ConfigError(f"{path}:{line}: a key must be a string, got {key!r}") from None
            if seen is not None:
                raise ConfigError(f"{path}:{line}: duplicate key {key!r} (first on line {seen})")
            first[key] = line
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    NoDuplicates.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        return yaml.load(text, Loader=NoDuplicates)  # noqa: S506 - a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        column = f" (column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{where}: not valid YAML: {what}{column}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
