"""Command-line flags generated from a settings dataclass, and the dataclass built back from the parsed flags.

Each field of the dataclass is one flag; its default and help text are declared once, on the field::

    num_heads: int = field(default=48, metadata={"help": "heads to intervene on"})

The flag's type comes from the annotation: ``int``, ``float``, ``str``; ``X | None`` (the flag takes an X);
``list[X]``, ``tuple[X, ...]`` or ``Sequence[X]`` (several values: ``nargs="+"``, or ``"*"`` when the default is
empty); ``bool`` (a switch, ``store_true``). Field metadata adjusts the flag:

* ``help``: the help text (the default is appended unless the text already says it);
* ``flag``: the CLI name when it differs from the field (``datasets`` -> ``--dataset``);
* ``aliases``: further names of the same flag (another tool's spelling: ``--model-name`` for ``--model``);
* ``invert``: a bool field that defaults to True, switched off by the flag (``generate`` <- ``--no_generate``);
* ``choices``: the allowed values (of each value, for a list);
* ``const``: the flag may be given without a value, meaning this one (``--judge`` = ``--judge endpoint``);
* ``nargs``: overrides the number of values of a list (e.g. ``"*"``: an empty list allowed);
* ``zero_is_none``: ``0`` on the command line means None (``--max_samples 0``: every sample);
* ``default_from``: a list field left out on the command line is ``[value of that other field]``
  (``--control_seeds`` defaults to ``[--seed]``);
* ``cli``: False keeps a field off the command line (the dataclass default is used);
* ``type``: the flag's parser where the annotation is a union (``num_heads: int | str`` takes ``48`` or ``4.7%``;
  the dataclass resolves a share).

Every flag is accepted in the underscore spelling and the dashed one (``--model_name`` / ``--model-name``); the
parsed value is stored under the field's name.
"""
from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class FlagSpec:
    """How one dataclass field appears on the command line."""

    field: str
    flag: str
    kwargs: dict[str, Any]
    aliases: tuple[str, ...] = ()

    @property
    def option_strings(self) -> list[str]:
        """``--flag``, for a name with underscores the dashed spelling, then the aliases."""
        names = [f"--{self.flag}"] + ([f"--{self.flag.replace('_', '-')}"] if "_" in self.flag else [])
        return names + [f"--{a}" for a in self.aliases if f"--{a}" not in names]


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """``(element type, takes several values)`` of an annotation, with ``| None`` removed."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"cannot make a flag of {tp}")
        tp = rest[0]
    origin = typing.get_origin(tp)
    if origin in (list, tuple, collections.abc.Sequence):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if len(set(args)) != 1:
            raise TypeError(f"cannot make a flag of {tp}")
        return args[0], True
    return tp, False


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value) if value else "none"
    return str(value)


def flag_specs(cls: type) -> list[FlagSpec]:
    """The flags of dataclass ``cls``, one per field (except ``metadata={"cli": False}``), in field order."""
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if meta.get("cli", True) is False:
            continue
        default = _field_default(f)
        required = default is dataclasses.MISSING  # a field without a default is a required flag
        tp, several = (meta["type"], False) if "type" in meta else _unwrap(hints[f.name])
        help_text = meta.get("help")
        kwargs: dict[str, Any] = {"dest": f.name}
        if tp is bool and not several:
            if meta.get("invert"):
                kwargs.update(action="store_false", default=True)
            else:
                kwargs.update(action="store_true", default=False)
        else:
            if tp not in (int, float, str) and "type" not in meta:
                raise TypeError(f"{cls.__name__}.{f.name}: cannot make a flag of {hints[f.name]}")
            kwargs["type"] = tp
            if several:
                kwargs["nargs"] = meta.get("nargs", "+" if default else "*")
                default = list(default) if default is not None else None
            elif "const" in meta:
                kwargs.update(nargs="?", const=meta["const"])
            if meta.get("default_from"):
                default = None
            if required:
                kwargs["required"] = True
                default = None
            else:
                kwargs["default"] = default
            kwargs["metavar"] = meta.get("flag", f.name).upper()
            if "choices" in meta:
                kwargs["choices"] = tuple(meta["choices"])
            if help_text is not None and default is not None and "default" not in help_text.lower():
                help_text = f"{help_text} (default: {_show(default)})"
        if help_text is not None:
            kwargs["help"] = help_text.replace("%", "%%")
        specs.append(FlagSpec(f.name, meta.get("flag", f.name), kwargs, tuple(meta.get("aliases", ()))))
    return specs


def add_config_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per field of dataclass ``cls`` to ``parser`` (see the module docstring)."""
    for spec in flag_specs(cls):
        parser.add_argument(*spec.option_strings, **spec.kwargs)


def config_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """The ``cls`` instance of the parsed flags: ``zero_is_none`` and ``default_from`` applied, a list given where
    the field's default is a tuple turned into a tuple, fields without a flag left at their default, and
    ``overrides`` (values the command computes, e.g. a resolved model name) last."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if f.metadata.get("cli", True) is False or not hasattr(args, name):
            continue
        value = getattr(args, name)
        if f.metadata.get("zero_is_none") and value == 0:
            value = None
        if isinstance(value, list) and isinstance(_field_default(f), tuple):
            value = tuple(value)
        values[name] = value
    for name, f in fields.items():
        source = f.metadata.get("default_from")
        if source and values.get(name) is None and name in values:
            values[name] = [values[source]]
    values.update(overrides)
    return cls(**values)
