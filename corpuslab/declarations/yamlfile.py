"""Strict YAML: duplicate keys, alias bombs, deep nesting and bad bytes are errors naming the
file and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from corpuslab.declarations.paths import MAX_YAML_DEPTH, MAX_YAML_NODES, DeclarationError

# PyYAML's safe loader (libyaml's when PyYAML was built with it); read_yaml adds the checks
_SafeLoader = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """Nodes in the document with every alias expanded (capped at ``limit + 1``).

    Aliases make the composed graph share nodes, so the count is memoized per node: linear in
    the file, however large the expansion. A recursive alias raises ``ValueError``.
    """
    size: dict[int, int] = {}
    visiting: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            visiting.discard(key)
            size[key] = min(limit + 1, 1 + sum(size[id(c)] for c in _children(node)))
            continue
        if key in size:
            continue
        if key in visiting:
            raise ValueError("an alias refers to a node that contains it (a recursive alias)")
        visiting.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)
    return size[id(root)]


def _check_nodes(root: yaml.Node, file: Path) -> None:
    """Repeated keys (a silent overwrite in YAML) and excessive nesting, with their key paths."""
    stack: list[tuple[yaml.Node, str, int]] = [(root, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_YAML_DEPTH:
            raise DeclarationError(
                f"{file}: {path or '(top level)'}: nested deeper than {MAX_YAML_DEPTH} levels"
            )
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for knode, vnode in node.value:
                if knode.tag == "tag:yaml.org,2002:merge":
                    stack.append((vnode, path, depth + 1))
                    continue
                name = str(knode.value) if isinstance(knode, yaml.ScalarNode) else "(complex key)"
                where = f"{path}.{name}" if path else name
                line = knode.start_mark.line + 1
                if name in seen:
                    raise DeclarationError(
                        f"{file}: {where}: duplicate key at line {line} (first at line "
                        f"{seen[name]}); YAML would silently keep only the last one"
                    )
                seen[name] = line
                stack.append((vnode, where, depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((c, f"{path}[{i}]", depth + 1) for i, c in enumerate(node.value))


def read_yaml(file: Path) -> Any:
    """One declaration file, strictly: UTF-8, one document, no repeated keys, bounded size."""
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DeclarationError(
            f"{file}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            "save the file as UTF-8"
        ) from None
    except OSError as exc:
        raise DeclarationError(f"{file}: cannot be read: {exc.strerror or exc}") from None
    loader = _SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            size = _expanded_size(node, MAX_YAML_NODES)
        except ValueError as exc:
            raise DeclarationError(f"{file}: {exc}") from None
        if size > MAX_YAML_NODES:
            raise DeclarationError(
                f"{file}: expands to more than {MAX_YAML_NODES:,} YAML nodes once its aliases "
                "are followed (an alias bomb?); declarations are far smaller"
            )
        _check_nodes(node, file)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise DeclarationError(f"{file}: not valid YAML: {exc}") from None
    except RecursionError:  # the pure-Python parser on deep nesting (libyaml stops at 1000)
        raise DeclarationError(f"{file}: nested too deeply to parse") from None
    finally:
        loader.dispose()
