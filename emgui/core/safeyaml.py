"""Reading YAML that users give us (question sets, persona definitions) with bounded memory.

YAML anchors and aliases (`&name` / `*name`) let a few hundred bytes describe a document of gigabytes
(the "billion laughs"): PyYAML shares the aliased objects in memory, but anything that walks or writes the
result (a normalized JSON copy, a list of prompts) expands them. The paper's own question sets use aliases
for their shared judge prompts, so they cannot be refused outright: instead the document's size with every
alias expanded is counted on the composed node graph (cheaply: each node once) and a document over the cap
is refused, naming the file, before anything is built from it.
"""

from __future__ import annotations

from typing import Any

from emgui.core.errors import EmguiError

MAX_YAML_BYTES = 8 << 20  # the text itself
MAX_EXPANDED_CHARS = 4_000_000  # characters of scalars (plus one per node) with every alias expanded


def expanded_size(root: Any, limit: int = MAX_EXPANDED_CHARS) -> int:
    """Characters of all scalars plus one per node, counting an aliased node each time it is used.
    Each node is visited once (sizes are memoized), so a small alias bomb costs little to measure.
    A recursive alias (a node that contains itself) raises EmguiError."""
    import yaml

    memo: dict[int, int] = {}
    in_progress: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            in_progress.discard(key)
            if isinstance(node, yaml.ScalarNode):
                size = len(node.value) + 1
            elif isinstance(node, yaml.SequenceNode):
                size = 1 + sum(memo[id(child)] for child in node.value)
            else:
                size = 1 + sum(memo[id(k)] + memo[id(v)] for k, v in node.value)
            memo[key] = min(size, limit + 1)  # past the limit the exact figure does not matter
            continue
        if key in memo:
            continue
        if key in in_progress:
            raise EmguiError("a YAML alias refers to a node that contains it (a recursive alias)")
        in_progress.add(key)
        stack.append((node, True))
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        stack.extend((child, False) for child in children if id(child) not in memo)
    return memo[id(root)]


def load_yaml(text: str, source: str, *, max_expanded: int = MAX_EXPANDED_CHARS) -> Any:
    """`yaml.safe_load`, refusing (with an EmguiError naming `source`) a text over MAX_YAML_BYTES, a
    document whose aliases expand past `max_expanded` characters, or one nested too deeply. Syntax errors
    raise yaml.YAMLError as safe_load does, so callers can report the line."""
    import yaml

    if len(text) > MAX_YAML_BYTES:
        raise EmguiError(
            f"{source}: {len(text) / 1e6:.1f} MB is too large for a YAML file here (limit {MAX_YAML_BYTES >> 20} MB)"
        )
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            size = expanded_size(node, max_expanded)
        except EmguiError as exc:
            raise EmguiError(f"{source}: {exc}") from None
        if size > max_expanded:
            raise EmguiError(
                f"{source}: with its aliases (*name) expanded this YAML is over {max_expanded:,} characters "
                "long; refusing it (an alias bomb?). Write shared parts out, or split the file"
            )
        return loader.construct_document(node)
    except RecursionError:
        raise EmguiError(f"{source}: the YAML is nested too deeply") from None
    finally:
        loader.dispose()
