"""`apply_override(cfg, "KEY=VALUE")`: one config field changed from the command line, type-checked."""

from __future__ import annotations

import ast

from ..ops.prior_weight import parse_prior_scale


def apply_override(cfg, item: str) -> None:
    """Sets a (dotted) config field from ``KEY=VALUE``, e.g. ``roi_heads.batch_size_per_image=64``; the value is read as
    a Python literal when it is one and must have the field's type (ValueError naming the override otherwise)."""
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like KEY=VALUE")
    key, text = item.split("=", 1)
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    *parents, leaf = key.strip().split(".")
    obj = cfg
    for name in parents:
        obj = getattr(obj, name, None)
        if obj is None:
            raise ValueError(f"unknown config section {name!r} in override {item!r}")
    if not hasattr(obj, leaf):
        raise ValueError(f"unknown config field {key!r}; fields here: {sorted(vars(obj))}")
    setattr(obj, leaf, _typed(value, getattr(obj, leaf), item, leaf))


def _typed(value, current, item: str, leaf: str):
    """``value`` converted to the type of the field's current value; a ValueError naming the override otherwise."""
    if leaf == "prior_scale":
        return parse_prior_scale(str(value), item)
    if current is None or hasattr(current, "__dataclass_fields__"):
        if current is not None:
            raise ValueError(f"override {item!r} names a config section, not a field")
        return value
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(current, bool):
        ok = isinstance(value, bool)
    elif isinstance(current, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(current, float):
        ok, value = number, float(value) if number else value
    elif isinstance(current, str):
        ok = isinstance(value, str)
    elif isinstance(current, tuple):
        if number:  # input.min_size_train=256 and =[256] mean (256,)
            value = [value]
        ok = isinstance(value, (list, tuple))
        if ok:
            value = tuple(_typed(v, current[0], item, "") for v in value) if current else tuple(value)
    else:
        ok = True
    if not ok:
        raise ValueError(f"override {item!r}: the field takes a {type(current).__name__} like {current!r}, "
                         f"got {value!r}")
    return value
