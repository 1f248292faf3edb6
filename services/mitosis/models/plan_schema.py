"""The plan as JSON: the schema a model answers in, and the checks an answer must pass.

`PLAN_SCHEMA` is sent as structured output (OpenAI's strict mode: every key required, no
other keys, so arguments a tool does not use are empty strings). An answer is never trusted
because the endpoint claims to honour the schema: OpenAI-compatible servers differ, so
`parse_plan_answer` checks it by hand and says, in words a model can act on, what is wrong.

A plan has 1 to 8 steps (`MIN_STEPS`..`MAX_STEPS`); the prompt asks for 3 to 6, but a short
task answered in fewer steps, or a careful plan with seven, is not worth a failure.

What is mechanical to fix is fixed before anything is refused (small models often ignore the
schema's descriptions): a document name is slugged and gets `.md`, names are made unique, an
empty title, rationale, instructions or summary is derived from what the step does, and a tool
name is matched without regard to case, spaces or hyphens.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from google.protobuf import json_format

from mitosis.models.base import TOOLS
from mitosis.tool_specs import PLAN_TOOLS
from mitosis.v1 import plan_pb2

MIN_STEPS = 1
MAX_STEPS = 8

ARGUMENT_KEYS = ("file_name", "title", "code", "path")
"""Every argument a plan step may carry; each is a string, empty when the tool ignores it."""

TOOL_ARGUMENTS: dict[str, tuple[str, ...]] = {spec.name: spec.plan_arguments for spec in PLAN_TOOLS}
"""The arguments each tool uses; only these reach `PlanStep.arguments`."""

REQUIRED_ARGUMENTS: dict[str, tuple[str, ...]] = {
    spec.name: spec.required_plan_arguments for spec in PLAN_TOOLS if spec.required_plan_arguments
}
"""Arguments a step's tool cannot do without. A python step's code may be left to the agent."""

_MAX_PROBLEMS = 6

_ARGUMENTS_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {
        "file_name": {
            "type": "string",
            "description": (
                "write_document: the document's relative path in the workspace, ending in .md, "
                "for example 'brief.md' or 'notes/outline.md'. Other tools: empty string."
            ),
        },
        "title": {
            "type": "string",
            "description": "write_document: the document's title. Other tools: empty string.",
        },
        "code": {
            "type": "string",
            "description": (
                "python: a short standard-library Python 3 script, or an empty string to let "
                "the executing agent write it. Other tools: empty string."
            ),
        },
        "path": {
            "type": "string",
            "description": "read_file: the workspace file to read. Other tools: empty string.",
        },
    },
    "required": list(ARGUMENT_KEYS),
    "additionalProperties": False,
}

_STEP_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {
        "title": {
            "type": "string",
            "description": "A short imperative title, for example 'Draft the market brief'.",
        },
        "tool": {"type": "string", "enum": list(TOOLS)},
        "rationale": {
            "type": "string",
            "description": "Why the step uses that tool, in one sentence a person can check.",
        },
        "instructions": {
            "type": "string",
            "description": "What the step must achieve, for the agent that executes it.",
        },
        "arguments": _ARGUMENTS_SCHEMA,
    },
    "required": ["title", "tool", "rationale", "instructions", "arguments"],
    "additionalProperties": False,
}

PLAN_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {
        "summary": {
            "type": "string",
            "description": "One paragraph that says how the plan answers the task.",
        },
        "steps": {
            "type": "array",
            "minItems": MIN_STEPS,
            "maxItems": MAX_STEPS,
            "items": _STEP_SCHEMA,
        },
    },
    "required": ["summary", "steps"],
    "additionalProperties": False,
}
"""The JSON schema of a plan, fit for `response_format` in strict mode."""


class PlanSchemaError(ValueError):
    """An answer that is not a plan; the message lists what is wrong, for the model to fix."""


@dataclass(frozen=True)
class PlannedStep:
    """One checked step of a model's plan."""

    title: str
    tool: str
    rationale: str
    instructions: str
    arguments: dict[str, str]
    """The arguments the tool uses and the model filled in; empty ones left out."""


@dataclass(frozen=True)
class PlanAnswer:
    """A model's plan that passed every check."""

    summary: str
    steps: tuple[PlannedStep, ...]

    def to_proto(self, model: str) -> plan_pb2.Plan:
        """Return the plan as the services send it, made by `model`."""
        return plan_pb2.Plan(
            steps=[step_proto(step) for step in self.steps], model=model, summary=self.summary
        )


def step_proto(step: PlannedStep) -> plan_pb2.PlanStep:
    """Return a checked step as a `PlanStep`."""
    message = plan_pb2.PlanStep(
        title=step.title,
        tool=step.tool,
        rationale=step.rationale,
        instructions=step.instructions,
    )
    message.arguments.update(step.arguments)
    return message


def parse_plan_answer(text: str | None) -> PlanAnswer:
    """Return the plan in a model's answer, or raise PlanSchemaError saying what is wrong."""
    if text is None or not text.strip():
        raise PlanSchemaError("the answer was empty; it must be a JSON object with a plan")
    try:
        data = json.loads(_without_code_fence(text))
    except json.JSONDecodeError as error:
        raise PlanSchemaError(
            f"the answer is not valid JSON ({error.msg} at line {error.lineno} column "
            f"{error.colno})"
        ) from None
    problems: list[str] = []
    answer = _check_plan(data, problems)
    if problems or answer is None:
        shown = problems[:_MAX_PROBLEMS]
        more = len(problems) - len(shown)
        raise PlanSchemaError(
            "; ".join(shown) + (f"; and {more} more problem{'s' * (more > 1)}" if more else "")
        )
    return answer


def plan_as_json(plan: plan_pb2.Plan) -> dict[str, object]:
    """Return a plan in the schema's shape (every argument key present), to show a model."""
    steps: list[dict[str, object]] = []
    for step in plan.steps:
        given = json_format.MessageToDict(step.arguments)
        arguments = {key: _as_text(given.get(key)) for key in ARGUMENT_KEYS}
        steps.append(
            {
                "title": step.title,
                "tool": step.tool,
                "rationale": step.rationale,
                "instructions": step.instructions,
                "arguments": arguments,
            }
        )
    return {"summary": plan.summary, "steps": steps}


def _as_text(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*\n(?P<body>.*?)\n\s*```\s*$", re.DOTALL)


def _without_code_fence(text: str) -> str:
    """Return the JSON inside a Markdown code fence, which some servers add without strict mode."""
    match = _FENCE.match(text)
    return match.group("body") if match else text


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _check_plan(data: object, problems: list[str]) -> PlanAnswer | None:
    if not isinstance(data, dict):
        problems.append(f"the answer is {_kind(data)}, not an object with summary and steps")
        return None
    summary = _text(data, "summary", "summary", problems, derived="")
    steps_value = data.get("steps")
    if "steps" not in data:
        problems.append("steps is missing")
        return None
    if not isinstance(steps_value, list):
        problems.append(f"steps is {_kind(steps_value)}, not an array of steps")
        return None
    if not MIN_STEPS <= len(steps_value) <= MAX_STEPS:
        problems.append(
            f"steps has {len(steps_value)} items; a plan has {MIN_STEPS} to {MAX_STEPS} steps"
        )
    names: set[str] = set()
    steps = [_check_step(index, value, problems, names) for index, value in enumerate(steps_value)]
    if problems:
        return None
    checked = tuple(step for step in steps if step is not None)
    if not summary:
        summary = "The plan: " + "; ".join(step.title for step in checked) + "."
    return PlanAnswer(summary=summary, steps=checked)


def _check_step(
    index: int, value: object, problems: list[str], names: set[str]
) -> PlannedStep | None:
    where = f"steps[{index}]"
    if not isinstance(value, dict):
        problems.append(f"{where} is {_kind(value)}, not an object")
        return None
    tool_value = _tool_name(value.get("tool"))
    instructions = _text(value, "instructions", f"{where}.instructions", problems, derived="")
    title = _text(value, "title", f"{where}.title", problems, derived="")
    title = title or _first_words(instructions) or f"Step {index + 1}"
    instructions = instructions or title
    tool = ""
    if "tool" not in value:
        problems.append(f"{where}.tool is missing; it must be one of {', '.join(TOOLS)}")
    elif tool_value not in TOOLS:
        shown = repr(tool_value) if isinstance(tool_value, str) else _kind(tool_value)
        problems.append(f"{where}.tool is {shown}, not one of {', '.join(TOOLS)}")
    else:
        tool = str(tool_value)
    rationale = _text(value, "rationale", f"{where}.rationale", problems, derived="")
    rationale = rationale or f"{title} needs the {tool or 'planned'} tool."
    arguments = _check_arguments(where, value.get("arguments", {}), tool, problems)
    if not tool or arguments is None:
        return None
    if tool == "write_document" and "file_name" in arguments:
        arguments["file_name"] = _unique(arguments["file_name"], names)
        arguments.setdefault("title", title)
    return PlannedStep(
        title=title,
        tool=tool,
        rationale=rationale,
        instructions=instructions,
        arguments=arguments,
    )


def _check_arguments(
    where: str, value: object, tool: str, problems: list[str]
) -> dict[str, str] | None:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        problems.append(f"{where}.arguments is {_kind(value)}, not an object")
        return None
    texts: dict[str, str] = {}
    for key in ARGUMENT_KEYS:
        given = value.get(key)
        if given is None:
            continue
        if not isinstance(given, str):
            problems.append(f"{where}.arguments.{key} is {_kind(given)}, not a string")
            continue
        texts[key] = given.strip() if key != "code" else given
    file_name = texts.get("file_name", "")
    if (
        tool == "write_document"
        and file_name
        and _check_relative(where, "file_name", file_name, problems)
    ):
        texts["file_name"] = document_name(file_name)
    for key in REQUIRED_ARGUMENTS.get(tool, ()):
        if not texts.get(key):
            problems.append(f"{where} uses {tool} but arguments.{key} is empty")
    if tool == "read_file" and texts.get("path"):
        _check_relative(where, "path", texts["path"], problems)
    used = TOOL_ARGUMENTS.get(tool, ())
    return {key: texts[key] for key in used if texts.get(key)}


def document_name(name: str) -> str:
    """Return a document's file name as a slugged relative path ending in .md (empty when
    nothing of it is left), for example "X item 4" -> "x-item-4.md"."""
    parts = [_slug(part) for part in name.replace("\\", "/").split("/")]
    parts = [part for part in parts if part]
    if not parts:
        return ""
    stem = parts[-1]
    for extension in (".md", ".markdown", ".txt", ".text"):
        if stem.endswith(extension) and len(stem) > len(extension):
            stem = stem[: -len(extension)]
            break
    parts[-1] = f"{stem}.md"
    return "/".join(parts)


def _slug(part: str) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", part.strip().lower()).strip("-.")
    return slug if slug not in ("", ".", "..") else ""


def _unique(name: str, names: set[str]) -> str:
    """Return `name`, or `name` with -2, -3 … before .md when a step already writes it."""
    candidate = name
    number = 1
    while candidate in names:
        number += 1
        candidate = f"{name.removesuffix('.md')}-{number}.md"
    names.add(candidate)
    return candidate


def _tool_name(value: object) -> object:
    """Return a tool name matched to the catalogue's spelling ("Write Document" ->
    "write_document"), or the value as it was."""
    if not isinstance(value, str):
        return value
    spelled = re.sub(r"[\s-]+", "_", value.strip().lower())
    return spelled if spelled in TOOLS else value


def _first_words(text: str, count: int = 8) -> str:
    words = text.split()
    return " ".join(words[:count]).rstrip(".,;:") if words else ""


def _check_relative(where: str, key: str, path: str, problems: list[str]) -> bool:
    parts: Sequence[str] = path.replace("\\", "/").split("/")
    if path.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", path):
        problems.append(
            f"{where}.arguments.{key} {path!r} is not a relative path inside the workspace"
        )
        return False
    return True


_REQUIRED = object()


def _text(
    data: Mapping[str, object],
    key: str,
    where: str,
    problems: list[str],
    *,
    derived: object = _REQUIRED,
) -> str:
    """Return the non-empty string at `key`, or note why it is not one. With `derived`, a
    missing, null or empty value is no problem: "" is returned for the caller to derive."""
    if derived is not _REQUIRED and (data.get(key) is None or data.get(key) == ""):
        return ""
    if key not in data:
        problems.append(f"{where} is missing")
        return ""
    value = data[key]
    if not isinstance(value, str):
        problems.append(f"{where} is {_kind(value)}, not a string")
        return ""
    if not value.strip() and derived is _REQUIRED:
        problems.append(f"{where} is empty")
    return value.strip()
