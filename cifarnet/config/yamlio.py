"""Reading YAML safely, with user errors instead of tracebacks.

PyYAML follows YAML 1.1, where `5e-5` (no dot) is a string, `1:30` is the integer 90 and
`010` is 8; the loader reads numbers as YAML 1.2 does (`5e-5` a float; `1:30` and `010` text,
which a number key then refuses).

Before anything is constructed, the loader walks the composed document once and refuses:
- a key written twice in one mapping, at any depth (PyYAML would keep the last one silently,
  so a second `factors:` would erase the first): `DuplicateKeyError` naming the key's dotted
  path and both lines;
- a document whose aliases (`*a`) expand it to more than `MAX_NODES` values (an "alias bomb"
  is a few hundred bytes that expand to billions of values), or that refers to itself:
  `YamlLimitError`;
- nesting deeper than Python's recursion allows.
Merge keys (`<<: *base`) keep YAML's meaning: explicit keys override merged ones.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from cifarnet.errors import UserError, clip

MAX_NODES = 100_000  # values in a document once aliases are expanded
MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlError(UserError):
    """A YAML text that is refused; the message starts with the offending key when known."""


class DuplicateKeyError(YamlError):
    """A mapping key written twice."""


class YamlLimitError(YamlError):
    """Aliases that expand too far, or refer to themselves; nesting too deep."""


class _Loader(yaml.SafeLoader):
    """The safe loader, plus floats written without a dot (`1e-4`), refusing duplicate keys
    and alias expansion past `MAX_NODES`."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _Checker(self).walk(node, "")
        return self.construct_document(node)


INT_TAG, FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
# YAML 1.2 numbers instead of YAML 1.1's: no base-60 (`1:30` was 90) and no octal from a
# leading zero (`010` was 8); those are now text, refused by a number key's type check.
# Floats may be written without a dot (`5e-5`).
INT_RE = re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F_]+)$")
FLOAT_RE = re.compile(r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)
# A copy of the inherited table: assigning into `_Loader.yaml_implicit_resolvers` before the
# class has its own would rewrite PyYAML's `SafeLoader` table, and every `yaml.safe_load` in
# the process (MLflow's, a user's) would read `8` and `0.5` as strings after importing us.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (INT_TAG, FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(INT_TAG, INT_RE, list("-+0123456789"))
_Loader.add_implicit_resolver(FLOAT_TAG, FLOAT_RE, list("-+0123456789."))


def _line(node: Node) -> int:
    return node.start_mark.line + 1


class _Checker:
    """One pass over the node graph: expanded size (memoised per node, so an alias bomb is
    measured in time proportional to its text) and duplicate keys (each mapping once)."""

    def __init__(self, loader: _Loader) -> None:
        self.loader = loader
        self.sizes: dict[int, int] = {}
        self.open: set[int] = set()

    def walk(self, node: Node, path: str) -> int:
        key = id(node)
        if key in self.sizes:
            return self.sizes[key]
        if key in self.open:
            raise YamlLimitError(f"{clip(path) or 'document'}: an alias refers to itself (line "
                                 f"{_line(node)}); write the values out")
        self.open.add(key)
        size = 1
        if isinstance(node, SequenceNode):
            for i, child in enumerate(node.value):
                size += self.walk(child, f"{path}[{i}]")
        elif isinstance(node, MappingNode):
            self._check_duplicates(node, path)
            for k, v in node.value:
                name = k.value if isinstance(k, ScalarNode) else "?"
                size += self.walk(k, path) + self.walk(v, f"{path}.{name}" if path else name)
        if size > MAX_NODES:
            raise YamlLimitError(f"{clip(path) or 'document'}: aliases expand this value to more "
                                 f"than {MAX_NODES:,} values (line {_line(node)}); write the "
                                 "values out")
        self.open.discard(key)
        self.sizes[key] = size
        return size

    def _check_duplicates(self, node: MappingNode, path: str) -> None:
        seen: dict[Any, int] = {}
        for k, _ in node.value:
            if not isinstance(k, ScalarNode) or k.tag == MERGE_TAG:
                continue  # complex keys are refused later as "keys must be strings"
            try:
                value = self.loader.construct_object(k)
                hash(value)
            except (yaml.YAMLError, TypeError):
                value = (k.tag, k.value)
            where = f"{path}.{k.value}" if path else str(k.value)
            if value in seen:
                raise DuplicateKeyError(
                    f"{clip(where)}: key written twice "
                    f"(lines {seen[value]} and {_line(k)}); keep one")
            seen[value] = _line(k)


def safe_load(text: str) -> Any:
    """`yaml.safe_load`, reading `5e-5` as a float; duplicate keys, alias bombs and runaway
    nesting raise `YamlError` (a UserError). Other syntax errors raise `yaml.YAMLError`."""
    try:
        return yaml.load(text, Loader=_Loader)
    except RecursionError:
        raise YamlLimitError("document: nested too deeply") from None


def parse_plain_scalar(text: str) -> Any:
    """`text` read as exactly one plain YAML scalar: `1` int, `0.05` float, `true` bool,
    `null` or empty None, anything else the string itself. Unlike `safe_load`, nothing is
    dropped: `1 #x` is the string '1 #x', not 1 with a comment, and `[1, 2]` is a string."""
    t = text.strip()
    loader = _Loader("")
    node = ScalarNode(loader.resolve(ScalarNode, t, (True, False)), t)
    try:
        return loader.construct_object(node)
    except (yaml.YAMLError, ValueError, OverflowError):
        return t


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping, read with the checked safe loader.

    Raises UserError for a missing file, invalid YAML, a duplicate key (naming it and its
    lines, and the file), runaway aliases, or a top level that is not a mapping."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such file")
    try:
        data = safe_load(p.read_text())
    except YamlError as exc:
        raise type(exc)(f"{exc} [in {path}]") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({yaml_problem(exc)})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def yaml_problem(exc: Exception) -> str:
    """PyYAML's error as one line with its line, column and cause ("line 3, column 1: found
    character '\\t' that cannot start any token"); its first line alone ("while scanning for the
    next token") named neither."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    hint = "; indent with spaces, not tabs" if "\\t" in problem else ""
    return f"{where}{problem}{hint}"
