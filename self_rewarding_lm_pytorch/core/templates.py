"""Templates from other people, rendered without letting them run code.

Judge prompts travel in TOML files, JSON and papers' repositories. A plain jinja2 environment lets
a template walk Python's object graph (`prompt.__class__.__mro__[1].__subclasses__()`), the first
step to running arbitrary code. So every template the project renders itself goes through
`sandboxed_environment()` (jinja2's immutable sandbox), and `unsafe_accesses` names, before
anything renders, each access the sandbox would refuse that can be seen in the template's text.
Accesses computed at render time (`prompt|attr('__cla' ~ 'ss__')`) are refused by the sandbox then.
"""

from __future__ import annotations

import string

import jinja2
import jinja2.nodes as nodes
from jinja2.sandbox import (
    UNSAFE_ASYNC_GENERATOR_ATTRIBUTES,
    UNSAFE_COROUTINE_ATTRIBUTES,
    UNSAFE_FUNCTION_ATTRIBUTES,
    UNSAFE_GENERATOR_ATTRIBUTES,
    UNSAFE_METHOD_ATTRIBUTES,
    ImmutableSandboxedEnvironment,
)

__all__ = ["is_unsafe_name", "sandboxed_environment", "unsafe_accesses"]

# Not underscored, yet each leads from an object to code or frames: `str.mro()` lists base classes.
_UNSAFE_NAMES = frozenset(
    {"mro"}
    | UNSAFE_FUNCTION_ATTRIBUTES
    | UNSAFE_METHOD_ATTRIBUTES
    | UNSAFE_GENERATOR_ATTRIBUTES
    | UNSAFE_COROUTINE_ATTRIBUTES
    | UNSAFE_ASYNC_GENERATOR_ATTRIBUTES
)


def sandboxed_environment() -> jinja2.Environment:
    """The one environment for project templates: sandboxed, immutable, strict about undefined names."""
    return ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)


def is_unsafe_name(name: str) -> bool:
    """An attribute a template may not reach: private/dunder names and the object-graph escapes."""
    return name.startswith("_") or name in _UNSAFE_NAMES


def _format_fields(text: str) -> list[str]:
    """The attribute/item names a str.format string reaches through (`{0.__class__}` -> `__class__`)."""
    found: list[str] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError:
        return found
    for _, field, _, _ in parsed:
        if field:
            # "0.__class__[x].y": every segment after the first names an attribute or an item
            segments = field.replace("[", ".").replace("]", "").split(".")[1:]
            found += [s for s in segments if s]
    return found


def unsafe_accesses(template: nodes.Template) -> list[str]:
    """Each unsafe access visible in a parsed template, described for an error message."""
    problems = []
    for node in template.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter, nodes.Call)):
        if isinstance(node, nodes.Getattr) and is_unsafe_name(node.attr):
            problems.append(f"attribute {node.attr!r} (line {node.lineno})")
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            if isinstance(node.arg.value, str) and is_unsafe_name(node.arg.value):
                problems.append(f"item [{node.arg.value!r}] (line {node.lineno})")
        elif isinstance(node, nodes.Filter) and node.name == "attr" and node.args:
            name = node.args[0]
            if isinstance(name, nodes.Const) and isinstance(name.value, str) and is_unsafe_name(name.value):
                problems.append(f"attr({name.value!r}) (line {node.lineno})")
        elif isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr):
            method, target = node.node.attr, node.node.node
            if method in ("format", "format_map") and isinstance(target, nodes.Const) and isinstance(target.value, str):
                bad = [s for s in _format_fields(target.value) if is_unsafe_name(s)]
                if bad:
                    problems.append(f"format field {bad[0]!r} in {target.value!r} (line {node.lineno})")
    return problems
