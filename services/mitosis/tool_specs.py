"""The catalogue of tools as data: each tool's name, what it does, and its arguments' schema.

The one list every part reads: the planner's schema and prompt (which tools a plan step may
name, with which arguments), the step agent (the functions it offers a model), the executor
(which calls it dispatches, and the tool names a task shows), and the metrics (their labels).
Pure data with no imports from the executor, so models may import it. Tools from MCP servers
are added at run time as more `ToolSpec`s (`mitosis.executor.tools.mcp`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

JsonSchema = Mapping[str, object]


@dataclass(frozen=True)
class ToolSpec:
    """One tool as a model sees it, and how a plan may use it."""

    name: str
    description: str
    """What the tool does, for the model that calls it."""
    parameters: JsonSchema
    """The JSON schema of its arguments (an object)."""
    guide: str = ""
    """One line for the planner's prompt; empty for tools a plan step cannot name."""
    plan_arguments: tuple[str, ...] = ()
    """The arguments a plan step with this tool carries (only plan-step tools have any)."""
    required_plan_arguments: tuple[str, ...] = ()
    """Plan arguments the tool cannot do without."""
    server: str = ""
    """The MCP server the tool comes from; empty for the executor's own tools."""
    strict: bool = True
    """Whether the schema fits OpenAI's strict mode (every key required, no others)."""

    @property
    def plan_step(self) -> bool:
        """Whether a plan step may name this tool."""
        return bool(self.guide)


def string_parameters(**described: str) -> dict[str, object]:
    """Return the schema of an object whose every key is a required string."""
    return {
        "type": "object",
        "properties": {
            key: {"type": "string", "description": text} for key, text in described.items()
        },
        "required": list(described),
        "additionalProperties": False,
    }


WRITE_DOCUMENT = ToolSpec(
    name="write_document",
    description=(
        "Write one Markdown document into the workspace. A writer drafts it from your "
        "instructions and it streams to the user's page as it is written. Returns a one-line "
        "summary. The sources this step found with web_search and fetch_url are listed at the "
        "document's end."
    ),
    parameters=string_parameters(
        file_name="the document's relative path, ending in .md",
        title="the document's title",
        instructions="what the document must contain: its sections, and every fact, figure "
        "and file content it needs",
    ),
    guide="writes one Markdown document into the workspace; the user watches it being written. "
    "Its file_name is a relative path ending in .md. The agent running the step may first "
    "search the web and read pages when the executor offers that, and then cites them.",
    plan_arguments=("file_name", "title"),
    required_plan_arguments=("file_name",),
)
PYTHON = ToolSpec(
    name="python",
    description="Run a Python 3 script (standard library only, no network) in the task's "
    "workspace folder. Returns what it printed (stdout and stderr).",
    parameters=string_parameters(code="the script"),
    guide="runs a short Python 3 script (standard library only, no network, about a minute) in "
    "the task's workspace folder; it can read and write files there, and later steps can read "
    "them.",
    plan_arguments=("code",),
)
LIST_FILES = ToolSpec(
    name="list_files",
    description="List the workspace's files with their sizes.",
    parameters=string_parameters(),
    guide="lists the files in the workspace.",
)
READ_FILE = ToolSpec(
    name="read_file",
    description="Return the text of a workspace file (UTF-8, at most 1 MiB).",
    parameters=string_parameters(path="the file's relative path in the workspace"),
    guide="reads a workspace file's text.",
    plan_arguments=("path",),
    required_plan_arguments=("path",),
)
FETCH_URL = ToolSpec(
    name="fetch_url",
    description="Fetch a public web page over HTTP(S) and return its title and readable text "
    "(the main content, without menus and markup). Cite the pages you use.",
    parameters=string_parameters(url="the page's http:// or https:// URL"),
)
WEB_SEARCH = ToolSpec(
    name="web_search",
    description="Search the web. Returns the top results, each with its title, URL and a "
    "snippet; read a result in full with fetch_url. Cite the pages you use.",
    parameters=string_parameters(query="what to search for, in a few words"),
)

BUILTIN_TOOLS: tuple[ToolSpec, ...] = (
    WRITE_DOCUMENT,
    PYTHON,
    LIST_FILES,
    READ_FILE,
    FETCH_URL,
    WEB_SEARCH,
)
"""The executor's own tools; fetch_url and web_search only when the executor turns them on."""

PLAN_TOOLS: tuple[ToolSpec, ...] = tuple(spec for spec in BUILTIN_TOOLS if spec.plan_step)
"""The tools a plan step may name (the others are offered to the step agent only)."""

PLAN_TOOL_NAMES: tuple[str, ...] = tuple(spec.name for spec in PLAN_TOOLS)

OPTIONAL_TOOL_NAMES: tuple[str, ...] = (FETCH_URL.name, WEB_SEARCH.name)
"""Built-in tools an executor offers only when configured."""


@dataclass(frozen=True)
class WebSource:
    """A page a step found (a search result) or read (fetch_url): what a document cites."""

    url: str
    title: str
    read: bool = False
    """Whether the step fetched the page, not only saw it in search results."""


@dataclass(frozen=True)
class Catalogue:
    """The tools one executor offers: the plan tools, the optional ones it turned on, and the
    tools of its MCP servers."""

    tools: tuple[ToolSpec, ...] = PLAN_TOOLS
    by_name: dict[str, ToolSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names: dict[str, ToolSpec] = {}
        for spec in self.tools:
            if spec.name in names:
                raise ValueError(f"two tools are named {spec.name!r}")
            names[spec.name] = spec
        object.__setattr__(self, "by_name", names)

    @classmethod
    def of(cls, *groups: Iterable[ToolSpec]) -> Catalogue:
        """Return the catalogue of the plan tools and the given ones."""
        return cls((*PLAN_TOOLS, *(spec for group in groups for spec in group)))

    @property
    def names(self) -> tuple[str, ...]:
        """The tools' names, in the catalogue's order (as a task shows them)."""
        return tuple(spec.name for spec in self.tools)

    def get(self, name: str) -> ToolSpec | None:
        """Return the tool named `name`, or None."""
        return self.by_name.get(name)

    def extra(self) -> tuple[ToolSpec, ...]:
        """Return the tools beyond the plan tools: optional built-ins and MCP tools."""
        return tuple(spec for spec in self.tools if not spec.plan_step)
