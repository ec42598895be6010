"""Every diffusers pipeline with a denoiser: supported, unsupported or not applicable, and why.

A pipeline *has a denoiser* when ``unet`` or ``transformer`` is a parameter of its ``__init__``
(a pipeline's components are its ``__init__`` parameters; ``_optional_components`` only says which
may be None). Prior/decoder cascades (Kandinsky priors, Würstchen, Stable Cascade, unCLIP,
Shap-E), Versatile Diffusion (``image_unet``), LLM-style pipelines (``model``) and latent
upsamplers have none and are not counted. :func:`denoiser_pipelines` walks the pipeline classes
``diffusers.pipelines`` exports (those whose optional dependencies are installed).

Each such class is in exactly one of these tables, read from ``census.json`` (data, one pipeline
per line; a reason there is either the text or the name of a shared one in its ``reasons``):

- :data:`SUPPORTED`: class name → (family name, the test that runs it with UG, as a pytest node
  id);
- :data:`UNSUPPORTED`: class name → what it does that UG can't yet do correctly;
- :data:`NOT_APPLICABLE`: class name → why UG does not apply (audio, 3-D, autoregressive, ...).

:func:`apply_upsample_guidance <ug_core.adapters.diffusers.apply_upsample_guidance>` refuses the
last two with a TypeError that gives the reason. ``tests/test_diffusers_census.py`` fails on a
pipeline in none or several of them, so a new diffusers release waits for a decision.
``python -m ug_core.adapters.diffusers.census`` prints the family table of ``docs/families.md``
(``--write docs/families.md`` updates it). Importing this module imports no diffusers.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "SUPPORTED",
    "UNSUPPORTED",
    "NOT_APPLICABLE",
    "FAMILY_DOCS",
    "REASONS",
    "denoiser_pipelines",
    "has_denoiser",
    "refusal",
    "family_table",
    "reasons_list",
]

#: The ``__init__`` parameters that make a pipeline one with a denoiser.
DENOISER_COMPONENTS = ("unet", "transformer")


_DATA = json.loads(Path(__file__).with_name("census.json").read_text(encoding="utf-8"))
#: Reason name → the reason, for reasons several pipelines share.
REASONS: dict[str, str] = _DATA["reasons"]
#: Pipeline class → (family name, pytest node id of a test that runs it with UG).
SUPPORTED: dict[str, tuple[str, str]] = {k: tuple(v) for k, v in _DATA["supported"].items()}
#: Pipeline class → what it does that UG can't yet do correctly.
UNSUPPORTED: dict[str, str] = {k: REASONS.get(v, v) for k, v in _DATA["unsupported"].items()}
#: Pipeline class → why upsample guidance does not apply to it.
NOT_APPLICABLE: dict[str, str] = {k: REASONS.get(v, v) for k, v in _DATA["not_applicable"].items()}
#: Family name → (parameterisation and the time the model gets, layout the adapter unpacks,
#: what the low-resolution call gets): the columns of the family table.
FAMILY_DOCS: dict[str, tuple[str, str, str]] = {
    k: tuple(v) for k, v in _DATA["family_docs"].items()
}


def has_denoiser(cls: type) -> bool:
    """Whether a pipeline class takes a ``unet`` or ``transformer`` component."""
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False
    return any(name in params for name in DENOISER_COMPONENTS)


def denoiser_pipelines() -> dict[str, type]:
    """Every pipeline class ``diffusers.pipelines`` exports that has a denoiser, by name."""
    import diffusers.pipelines
    from diffusers import DiffusionPipeline

    found = {}
    for name in sorted(dir(diffusers.pipelines)):
        value = getattr(diffusers.pipelines, name, None)
        if inspect.isclass(value) and issubclass(value, DiffusionPipeline) and has_denoiser(value):
            found[name] = value
    return found


def refusal(pipe_class: type) -> str | None:
    """Why UG refuses a pipeline class (unsupported or not applicable), or None.

    The class decides by its own name, or a user's subclass by its nearest census-listed base.
    """
    for cls in pipe_class.__mro__:
        name = cls.__name__
        if name in SUPPORTED:
            return None
        if name in UNSUPPORTED:
            return f"{pipe_class.__name__} is not supported yet: {UNSUPPORTED[name]}"
        if name in NOT_APPLICABLE:
            return (
                f"upsample guidance does not apply to {pipe_class.__name__}: {NOT_APPLICABLE[name]}"
            )
    return None


def _pipelines_of(family: str) -> list[str]:
    """The supported pipeline classes of a family, sorted."""
    return sorted(name for name, (f, _) in SUPPORTED.items() if f == family)


def family_table(families: Iterable[Any] | None = None) -> str:
    """The family table (markdown): one row per built-in family with a supported pipeline."""
    if families is None:
        from .families import FAMILIES as families
    header = (
        "| family (denoiser classes) | pipelines tested | parameterisation, time the model gets "
        "| layout the adapter unpacks | what the low call gets |\n"
        "| --- | --- | --- | --- | --- |\n"
    )
    rows = []
    for family in families:
        pipelines = _pipelines_of(family.name)
        if not pipelines:
            continue
        if family.name not in FAMILY_DOCS:
            raise ValueError(
                f"FAMILY_DOCS has no row for the {family.name} family (supported: "
                f"{', '.join(pipelines)}); add its parameterisation, layout and low-call inputs"
            )
        time, layout, low = FAMILY_DOCS[family.name]
        classes = ", ".join(f"`{c}`" for c in family.classes)
        names = ", ".join(f"`{p}`" for p in pipelines)
        rows.append(f"| {family.name} ({classes}) | {names} | {time} | {layout} | {low} |\n")
    counts = (
        f"\n{len(SUPPORTED)} pipelines supported, {len(UNSUPPORTED)} unsupported (with the "
        f"reason), {len(NOT_APPLICABLE)} not applicable.\n"
    )
    return header + "".join(rows) + counts


def reasons_list() -> str:
    """The unsupported and not-applicable pipelines grouped by reason (markdown)."""
    parts = []
    for title, table in (("Not supported yet", UNSUPPORTED), ("Not applicable", NOT_APPLICABLE)):
        by_reason: dict[str, list[str]] = {}
        for name, reason in sorted(table.items()):
            by_reason.setdefault(reason, []).append(name)
        items = [
            f"- {reason[0].upper()}{reason[1:]}: {', '.join(f'`{n}`' for n in names)}.\n"
            for reason, names in sorted(by_reason.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        ]
        parts.append(f"\n{title} ({len(table)}):\n\n" + "".join(items))
    return "".join(parts)


def summary_table() -> str:
    """The short family table of the README: family, number of pipelines, parameterisation."""
    from .families import FAMILIES

    rows = [
        f"| {family.name} | {len(_pipelines_of(family.name))} | {FAMILY_DOCS[family.name][0]} |\n"
        for family in FAMILIES
        if _pipelines_of(family.name)
    ]
    return (
        "| family | pipelines tested | parameterisation, time the model gets |\n"
        "| --- | ---: | --- |\n" + "".join(rows) + f"\n{len(SUPPORTED)} pipelines supported, "
        f"{len(UNSUPPORTED)} unsupported (with the reason), {len(NOT_APPLICABLE)} not applicable: "
        "[docs/families.md](docs/families.md).\n"
    )


BEGIN, END = "<!-- family table: begin -->\n", "<!-- family table: end -->\n"
SUMMARY = "<!-- family summary: begin -->\n", "<!-- family summary: end -->\n"


def _between(text: str, markers: tuple[str, str], body: str) -> str:
    """``text`` with the part between ``markers`` replaced by ``body`` (unchanged if absent)."""
    if markers[0] not in text:
        return text
    head, rest = text.split(markers[0], 1)
    _, tail = rest.split(markers[1], 1)
    return head + markers[0] + body + markers[1] + tail


def with_table(text: str) -> str:
    """``text`` with its family table (or the README's summary) regenerated from the census."""
    if not any(begin in text and end in text for begin, end in ((BEGIN, END), SUMMARY)):
        raise ValueError(f"the page must hold the markers {BEGIN.strip()} and {END.strip()}")
    text = _between(text, (BEGIN, END), family_table() + reasons_list())
    return _between(text, SUMMARY, summary_table())


def main(argv: list[str] | None = None) -> int:
    """Print the family table, or ``--write PAGE`` to update it in a markdown page."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--write", type=Path, help="a markdown page with the table markers")
    args = parser.parse_args(argv)
    if args.write is None:
        sys.stdout.write(family_table() + reasons_list())
    else:
        args.write.write_text(with_table(args.write.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
