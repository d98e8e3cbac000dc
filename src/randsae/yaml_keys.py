"""Duplicate keys in YAML. PyYAML (and Snakemake's config reader) let the last of two equal
keys win without a word, so a config that sets ``sae.k`` twice silently runs the second."""

from __future__ import annotations

import yaml


def duplicate_keys(text: str) -> list[str]:
    """One line per key given twice in the same mapping: its key path and both line numbers."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    out: list[str] = []
    seen: set[int] = set()  # aliases can make the node graph cyclic

    def walk(node: yaml.Node | None, path: str) -> None:
        if node is None or id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key_node, value_node in node.value:
                key = str(key_node.value)
                here = f"{path}.{key}" if path else key
                line = key_node.start_mark.line + 1
                if key in first and key != "<<":  # "<<" is a merge, not a key
                    out.append(f"{here}: duplicate key (lines {first[key]} and {line}); the last one would silently win")
                first.setdefault(key, line)
                walk(value_node, here)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{path}[{i}]")

    walk(root, "")
    return out
