"""The offline model: a deterministic planner and writer that needs no network.

The same task text always gives the same plan and byte-identical documents, so demos and tests
run anywhere and can be compared run to run. Task text is untrusted: it only ever reaches code
as a Python literal made by `ascii()`, never by pasting it into source.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from importlib import resources

from mitosis.models.offline import scripts
from mitosis.v1 import plan_pb2
from mitosis.words import counted

MODEL_NAME = "offline"

KEY_TERMS_FILE = "notes/key_terms.json"
FIGURES_FILE = "notes/figures.json"
OUTLINE_FILE = "outline.md"

# Words as the model and the generated scripts both see them (one pattern keeps them in step).
_WORD_PATTERN = r"[^\W_]+(?:[-'\u2019][^\W_]+)*"
_NUMBER_PATTERN = r"-?[0-9]+(?:\.[0-9]+)?"
_TOKEN = re.compile(r"[0-9]+(?:\.[0-9]+)+|" + _WORD_PATTERN + r"|[.!?;:\n]|,")
_BOUNDARIES = frozenset({".", "!", "?", ";", ":", "\n"})
_KEY_TERM_LIMIT = 8
_QUOTE_LIMIT = 600


def _word_set(words: str) -> frozenset[str]:
    return frozenset(words.split())


_STOPWORDS = _word_set(
    """a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each either etc few
    for from further get had has have having he her here hers him his how i if in into is it its
    itself just let like me more most my no nor not now of off on once only or other our ours out
    over own please same she should so some such than that the their them then there these they
    this those through to too under until up us use using very vs versus v was we were what when
    where which while who whom why will with would you your yours"""
)
# Request words and size adjectives say how to answer, not what the answer is about.
_FILLERS = _word_set(
    """write create make draft produce prepare generate build give tell show help need want short
    quick detailed simple concise comprehensive thorough basic one-page page"""
)
_DETERMINERS = _word_set("a an the my our your their his her its this these those")
_STOP_AT = _word_set(
    "for with that which who whom so because using including by while where when but"
)
_OPTION_JOINERS = frozenset({"and", "or", "vs", "versus", "v", "with", "against", ","})

# Kinds in priority order; each maps a trigger word to the noun that names the deliverable.
_KIND_WORDS: dict[str, dict[str, str]] = {
    "compute": {
        "code": "code",
        "script": "script",
        "python": "script",
        "compute": "computation",
        "computes": "computation",
        "computing": "computation",
        "calculate": "calculation",
        "calculates": "calculation",
        "calculation": "calculation",
        "calculator": "calculator",
        "algorithm": "algorithm",
        "function": "function",
        "simulate": "simulation",
        "simulation": "simulation",
        "implement": "implementation",
        "sql": "query",
        "regex": "pattern",
        "parse": "parser",
        "parser": "parser",
    },
    "comparison": {
        "compare": "comparison",
        "compares": "comparison",
        "comparing": "comparison",
        "comparison": "comparison",
        "versus": "comparison",
        "vs": "comparison",
        "contrast": "comparison",
        "difference": "comparison",
        "differences": "comparison",
    },
    "guide": {
        "guide": "guide",
        "plan": "plan",
        "planning": "plan",
        "how": "guide",
        "howto": "guide",
        "tutorial": "tutorial",
        "checklist": "checklist",
        "steps": "guide",
        "roadmap": "roadmap",
        "playbook": "playbook",
        "itinerary": "itinerary",
        "schedule": "schedule",
        "instructions": "guide",
        "handbook": "handbook",
        "manual": "manual",
        "walkthrough": "walkthrough",
    },
    "brief": {
        "brief": "brief",
        "briefing": "briefing",
        "report": "report",
        "analysis": "analysis",
        "analyse": "analysis",
        "analyze": "analysis",
        "overview": "overview",
        "memo": "memo",
        "summary": "summary",
        "summarize": "summary",
        "summarise": "summary",
        "review": "review",
        "study": "study",
        "research": "research",
        "assessment": "assessment",
        "whitepaper": "whitepaper",
        "article": "article",
        "essay": "essay",
        "explainer": "explainer",
        "proposal": "proposal",
    },
}
_KIND_TRIGGERS = frozenset(word for words in _KIND_WORDS.values() for word in words)
_NOT_TERMS = _STOPWORDS | _FILLERS | _KIND_TRIGGERS
_SKIPPABLE = _NOT_TERMS | {","}
_SMALL_TITLE_WORDS = _word_set("a an the and or of in on to for at by vs with from")

_KIND_LABELS = {
    "brief": "a brief or report",
    "guide": "a plan or how-to guide",
    "comparison": "a comparison",
    "compute": "a computation",
    "generic": "a general request",
}


@dataclass(frozen=True)
class _Profile:
    """What the model reads from a task: its kind, subject, deliverable and key terms."""

    task_text: str
    kind: str
    subject: str
    subject_title: str
    slug: str
    deliverable: str
    key_terms: tuple[tuple[str, int], ...]
    options: tuple[str, ...]
    main_file: str
    main_title: str
    program: str = ""
    """For a compute task: the program it delivers (a module of `scripts/`), else empty."""
    program_file: str = ""
    """Where that program is saved in the workspace, a runnable `.py` file."""


@dataclass(frozen=True)
class _StepSpec:
    """A plan step before it becomes a message, with the role of the document it writes."""

    title: str
    tool: str
    rationale: str
    instructions: str
    arguments: dict[str, str]
    role: str = ""


class OfflineModel:
    """Plans tasks and writes documents from the task text alone, deterministically."""

    def __init__(self, *, pace: float = 0.02) -> None:
        if pace < 0:
            raise ValueError(f"pace must be zero or more seconds, not {pace}")
        self._pace = pace

    @property
    def name(self) -> str:
        """The model's name as the task record shows it."""
        return MODEL_NAME

    async def create_plan(self, task_text: str) -> plan_pb2.Plan:
        """Return a plan of 3 to 6 steps that fits the kind of task the text describes."""
        profile = _profile(task_text)
        specs = _step_specs(profile)
        return plan_pb2.Plan(
            steps=[_plan_step(spec) for spec in specs],
            model=MODEL_NAME,
            summary=_plan_summary(profile, specs),
        )

    async def revise_plan(
        self, task_text: str, plan: plan_pb2.Plan, failed_step_index: int, failure: str
    ) -> plan_pb2.Plan:
        """Return steps that replace the failed step and everything after it.

        The failure is recorded in a document; the remaining steps that do not depend on the
        failed step (no python steps, no reads of files nothing else writes) carry on.
        """
        if not 0 <= failed_step_index < len(plan.steps):
            raise ValueError(
                f"failed_step_index {failed_step_index} is outside the plan's "
                f"{counted(len(plan.steps), 'step')}"
            )
        failed = plan.steps[failed_step_index]
        note = _revision_note_step(failed_step_index, failed, failure)
        kept = _steps_that_survive(plan, failed_step_index, note)
        return plan_pb2.Plan(
            steps=[note, *kept],
            model=MODEL_NAME,
            summary=_revision_summary(failed_step_index, failed, failure, len(kept)),
        )

    async def write_document(self, task_text: str, step: plan_pb2.PlanStep) -> AsyncIterator[str]:
        """Yield the step's Markdown document a few words at a time, pacing between pieces."""
        document = _document(_profile(task_text), step)
        seed = f"{task_text}\0{_string_argument(step, 'file_name')}"
        for number, piece in enumerate(_pieces(document, seed)):
            if number:
                # Without pacing still yield to the loop, so one document cannot hold it.
                await asyncio.sleep(self._pace)
            yield piece


# ---------------------------------------------------------------------------------------------
# Reading the task


def _profile(task_text: str) -> _Profile:
    tokens = _tokens(task_text)
    lowered = [token.lower() for token in tokens]
    kind, hit = _kind_and_trigger(lowered)
    deliverable, modifier = _deliverable(tokens, lowered, kind, hit)
    if kind == "compute":
        # The document explains the code and its results; it is not the code itself.
        deliverable = f"{deliverable} write-up"
    subject_tokens = _subject_tokens(tokens, lowered, kind, hit, modifier)
    words = _without_leading_determiners(subject_tokens)
    subject = _joined(subject_tokens) or "the task"
    subject_title = _title_case(words) or "Task"
    slug = _slug(words, 40) or "task"
    main_file = f"{slug}-{_slug(deliverable.split(), 20) or 'document'}.md"
    program = _program(lowered) if kind == "compute" else ""
    program_file = _program_file(program) if program else ""
    return _Profile(
        task_text=task_text,
        kind=kind,
        subject=subject,
        subject_title=subject_title,
        slug=slug,
        deliverable=deliverable,
        key_terms=_key_terms(task_text),
        options=_options(subject_tokens) if kind == "comparison" else (),
        main_file=main_file,
        main_title=_main_title(subject_title, deliverable, words),
        program=program,
        program_file=program_file,
    )


# Programs a compute task delivers, by a word of the task; any other gets number_summary.
_PROGRAMS = {
    "prime": "primes",
    "primes": "primes",
    "fibonacci": "fibonacci",
    "factorial": "factorials",
    "factorials": "factorials",
    "interest": "compound_interest",
}
_PROGRAM_DEFAULTS = {"primes": 100, "fibonacci": 20, "factorials": 10}
_PROGRAM_LIMITS = {"primes": 1_000_000, "fibonacci": 1000, "factorials": 200}


def _program(lowered: Sequence[str]) -> str:
    return next((_PROGRAMS[word] for word in lowered if word in _PROGRAMS), "number_summary")


def _program_file(program: str) -> str:
    """Return where the program is saved: its own name, a module name people can import."""
    return f"{program}.py"


def _program_source(profile: _Profile) -> str:
    """Return the program's source with the task's numbers as its defaults."""
    numbers = [float(text) for text in _numbers(profile.task_text)]
    finite = [number for number in numbers if abs(number) != float("inf")]
    if profile.program == "number_summary":
        return script_code("number_summary", NUMBERS=tuple(finite))
    if profile.program == "compound_interest":
        # The task's numbers in the order people state them: "1000 at 5% for 10 years".
        stated = finite[:3]
        principal, rate, years = [*stated, *(1000.0, 5.0, 10.0)[len(stated) :]]
        whole_years = int(years) if 0 < years <= 200 and years.is_integer() else 10
        return script_code(
            "compound_interest", PRINCIPAL=principal, RATE_PERCENT=rate, YEARS=whole_years
        )
    name = {"primes": "LIMIT", "fibonacci": "COUNT", "factorials": "LIMIT"}[profile.program]
    wanted = [
        int(n) for n in numbers if n.is_integer() and 0 < n <= _PROGRAM_LIMITS[profile.program]
    ]
    value = wanted[0] if wanted else _PROGRAM_DEFAULTS[profile.program]
    return script_code(profile.program, **{name: value})


def _tokens(task_text: str) -> list[str]:
    # "vs." is a word, not the end of a sentence.
    text = re.sub(r"\b(vs|v)\.", r"\1", task_text, flags=re.IGNORECASE)
    return _TOKEN.findall(text)


def _kind_and_trigger(lowered: Sequence[str]) -> tuple[str, int | None]:
    for kind, words in _KIND_WORDS.items():
        for index, word in enumerate(lowered):
            if word in words and _is_trigger(lowered, index):
                return kind, index
    return "generic", None


def _is_trigger(lowered: Sequence[str], index: int) -> bool:
    # "how" names a guide only as "how to"; "function" asks for code only as "a function".
    if lowered[index] == "how":
        return index + 1 < len(lowered) and lowered[index + 1] == "to"
    if lowered[index] == "function":
        return index > 0 and lowered[index - 1] in {"a", "an"}
    return True


def _deliverable(
    tokens: Sequence[str], lowered: Sequence[str], kind: str, hit: int | None
) -> tuple[str, int | None]:
    """Return the deliverable's name and the index of the word that qualifies it, if any."""
    if hit is None:
        return "overview", None
    trigger = lowered[hit]
    noun = _KIND_WORDS[kind][trigger]
    before = hit - 1
    if noun == trigger and before >= 0 and _is_content(lowered[before]):
        return f"{lowered[before]} {noun}", before
    return noun, None


def _is_content(lowered_token: str) -> bool:
    return lowered_token not in _SKIPPABLE and lowered_token not in _BOUNDARIES


def _subject_tokens(
    tokens: Sequence[str], lowered: Sequence[str], kind: str, hit: int | None, modifier: int | None
) -> list[str]:
    stop_at = _STOP_AT - {"with"} if kind == "comparison" else _STOP_AT
    if hit is None:
        found = _run_after(tokens, lowered, 0, stop_at)
    elif lowered[hit] in {"vs", "versus"}:
        found = _run_around(tokens, lowered, hit, stop_at)
    elif lowered[hit] == "how":
        rest = _run_after(tokens, lowered, hit + 2, stop_at)
        found = ["how", "to", *rest] if rest else []
    else:
        found = _run_after(tokens, lowered, hit + 1, stop_at)
    return found or _content_fallback(tokens, lowered, {hit, modifier})


def _run_after(
    tokens: Sequence[str], lowered: Sequence[str], start: int, stop_at: frozenset[str]
) -> list[str]:
    """Return the phrase that starts at `start`, skipping lead-in words, up to a clause break."""
    index = start
    while index < len(lowered) and _is_lead_in(lowered, index):
        index += 1
    run: list[str] = []
    words = 0
    has_content = False
    while index < len(lowered) and words < 7:
        token = lowered[index]
        if token in _BOUNDARIES or (has_content and token in stop_at):
            break
        if has_content and token[0].isdigit() and run and run[-1].lower() in _STOPWORDS:
            break
        run.append(tokens[index])
        words += token != ","
        has_content = has_content or _is_content(token)
        index += 1
    return _trimmed(run) if has_content else []


def _is_lead_in(lowered: Sequence[str], index: int) -> bool:
    """Tell whether a word only leads into the subject (a determiner counts if content follows)."""
    token = lowered[index]
    if token == ":" or token not in _SKIPPABLE:
        return token == ":"
    if token not in _DETERMINERS:
        return True
    following = lowered[index + 1 :]
    nearest = next((word for word in following if word not in _DETERMINERS), "")
    return not _is_content(nearest)


def _run_around(
    tokens: Sequence[str], lowered: Sequence[str], hit: int, stop_at: frozenset[str]
) -> list[str]:
    left: list[str] = []
    index = hit - 1
    while index >= 0 and len(left) < 3 and _is_content(lowered[index]):
        left.insert(0, tokens[index])
        index -= 1
    right = _run_after(tokens, lowered, hit + 1, stop_at)[:3]
    if left and right:
        return [*left, tokens[hit], *right]
    return left or right


def _trimmed(run: list[str]) -> list[str]:
    end = len(run)
    while end and run[end - 1].lower() in _SKIPPABLE:
        end -= 1
    return run[:end]


def _content_fallback(
    tokens: Sequence[str], lowered: Sequence[str], excluded: set[int | None]
) -> list[str]:
    seen: set[str] = set()
    found: list[str] = []
    for index, token in enumerate(lowered[:60]):
        if index in excluded or not _is_content(token) or token in seen:
            continue
        seen.add(token)
        found.append(tokens[index])
        if len(found) == 5:
            break
    return found


def _without_leading_determiners(tokens: Sequence[str]) -> list[str]:
    index = 0
    while index < len(tokens) and tokens[index].lower() in _DETERMINERS:
        index += 1
    return list(tokens[index:])


def _joined(tokens: Sequence[str]) -> str:
    text = ""
    for token in tokens:
        text += token if token == "," or not text else f" {token}"
    return text


def _title_case(words: Sequence[str]) -> str:
    return _joined([_title_word(word, first=index == 0) for index, word in enumerate(words)])


def _title_word(word: str, *, first: bool) -> str:
    if any(char.isupper() for char in word):
        return word
    if not first and word in _SMALL_TITLE_WORDS:
        return word
    return "-".join(part[:1].upper() + part[1:] for part in word.split("-"))


def _slug(words: Sequence[str], limit: int) -> str:
    """Return a lowercase slug of [a-z0-9-] no longer than `limit`, cut at a word boundary."""
    folded = unicodedata.normalize("NFKD", " ".join(words)).encode("ascii", "ignore").decode()
    parts = re.findall(r"[a-z0-9]+", re.sub(r"['\u2019]", "", folded.lower()))
    slug = ""
    for part in parts:
        candidate = f"{slug}-{part}" if slug else part
        if len(candidate) > limit:
            return slug or part[:limit]
        slug = candidate
    return slug


def _main_title(subject_title: str, deliverable: str, words: Sequence[str]) -> str:
    if words and words[0].lower() == "how":
        return subject_title
    return f"{subject_title}: {_title_case(deliverable.split())}"


def _key_terms(task_text: str) -> tuple[tuple[str, int], ...]:
    """Return the task's most frequent content words, ties broken by first appearance."""
    counts: Counter[str] = Counter()
    first_seen: dict[str, int] = {}
    for index, match in enumerate(re.finditer(_WORD_PATTERN, task_text)):
        word = match.group(0).lower()
        if len(word) < 2 or word.isdigit() or word in _NOT_TERMS:
            continue
        counts[word] += 1
        first_seen.setdefault(word, index)
    ranked = sorted(counts, key=lambda word: (-counts[word], first_seen[word]))
    return tuple((word, counts[word]) for word in ranked[:_KEY_TERM_LIMIT])


def _options(subject_tokens: Sequence[str]) -> tuple[str, ...]:
    """Return the things a comparison compares: at least two, at most four."""
    groups: list[list[str]] = [[]]
    for token in subject_tokens:
        if token.lower() in _OPTION_JOINERS:
            groups.append([])
        else:
            groups[-1].append(token)
    found = [_joined(_without_leading_determiners(group)) for group in groups]
    options = [option for option in found if option][:4]
    if len(options) >= 2:
        return tuple(options)
    if options:
        return (options[0], "the alternatives")
    return ("Option A", "Option B")


def _numbers(task_text: str) -> list[str]:
    return re.findall(_NUMBER_PATTERN, task_text)


# ---------------------------------------------------------------------------------------------
# Plans


def _step_specs(profile: _Profile) -> list[_StepSpec]:
    middle: list[_StepSpec]
    if profile.kind == "compute":
        # The program, run, then the figures and the write-up: six steps, the most a plan has.
        return [
            _key_terms_step(profile),
            _write_program_step(profile),
            _run_program_step(profile),
            _figures_step(profile),
            _main_step(profile),
            _review_step(profile, FIGURES_FILE),
        ]
    if profile.kind == "generic":
        middle = [_outline_step(profile), _main_step(profile)]
    else:
        middle = [_outline_step(profile), _main_step(profile), _companion_step(profile)]
    review = profile.main_file
    return [_key_terms_step(profile), *middle, _list_files_step(), _review_step(profile, review)]


def _plan_step(spec: _StepSpec) -> plan_pb2.PlanStep:
    step = plan_pb2.PlanStep(
        title=spec.title, tool=spec.tool, rationale=spec.rationale, instructions=spec.instructions
    )
    step.arguments.update(spec.arguments)
    return step


def _key_terms_step(profile: _Profile) -> _StepSpec:
    return _StepSpec(
        title="Extract the key terms",
        tool="python",
        rationale=(
            "A short standard-library script counts the task's words the same way every time "
            "and leaves a JSON file the documents can point to."
        ),
        instructions=(
            f"Run the script: it reads the task text (embedded as a literal), ranks its key terms, "
            f"prints them and saves {KEY_TERMS_FILE} in the workspace."
        ),
        arguments={"code": _key_terms_code(profile)},
    )


def _write_program_step(profile: _Profile) -> _StepSpec:
    return _StepSpec(
        title="Write the program",
        tool="python",
        rationale="The task asks for code: a runnable file is the deliverable, not a description.",
        instructions=(
            f"Run the script: it saves the program as {profile.program_file} in the workspace "
            "and checks that it parses."
        ),
        arguments={
            "code": script_code(
                "write_program", PATH=profile.program_file, SOURCE=_program_source(profile)
            )
        },
    )


def _run_program_step(profile: _Profile) -> _StepSpec:
    return _StepSpec(
        title="Run the program",
        tool="python",
        rationale="Running the delivered file shows that it works and what it prints.",
        instructions=f"Run {profile.program_file} as `python {profile.program_file}` would.",
        arguments={"code": script_code("run_program", PATH=profile.program_file)},
    )


def _figures_step(profile: _Profile) -> _StepSpec:
    return _StepSpec(
        title="Work through the numbers",
        tool="python",
        rationale="Arithmetic belongs in code, where it is exact and can be re-run and checked.",
        instructions=(
            "Run the script: it collects the numbers the task states, computes their count, sum, "
            f"mean, median, minimum and maximum, prints them and saves {FIGURES_FILE} (which "
            "says so in its note when the task states no numbers)."
        ),
        arguments={"code": _figures_code(profile)},
    )


def _outline_step(profile: _Profile) -> _StepSpec:
    noun = "approach" if profile.kind == "compute" else profile.deliverable
    return _StepSpec(
        title=f"Outline the {noun}",
        tool="write_document",
        rationale="An outline is prose for a reader, so the document writer produces it as a page.",
        instructions=(
            f"List the sections of {profile.main_file} with one line on what each covers, the "
            "files the task delivers, and the key terms the documents use."
        ),
        arguments={"file_name": OUTLINE_FILE, "title": f"Outline: {profile.main_title}"},
        role="outline",
    )


def _main_step(profile: _Profile) -> _StepSpec:
    return _StepSpec(
        title=f"Draft the {profile.deliverable}",
        tool="write_document",
        rationale="The main deliverable is a structured Markdown document, which is what the "
        "document writer produces.",
        instructions=(
            f"Write the {profile.deliverable} on {profile.subject} following the outline: a title, "
            "sections with headings, bullet lists and a table, in about 600 to 1200 words."
        ),
        arguments={"file_name": profile.main_file, "title": profile.main_title},
        role="main",
    )


def _companion_step(profile: _Profile) -> _StepSpec:
    title, suffix, label, role = {
        "brief": ("Summarise the key takeaways", "key-takeaways", "Key Takeaways", "takeaways"),
        "guide": ("Write the checklist", "checklist", "Checklist", "checklist"),
        "comparison": ("Answer common questions", "faq", "FAQ", "faq"),
    }[profile.kind]
    file_name = f"{profile.slug}-{suffix}.md"
    if file_name == profile.main_file:
        # The main document already is a checklist; the companion condenses it.
        title, file_name, label = (
            "Write the quick reference",
            f"{profile.slug}-quick-reference.md",
            "Quick Reference",
        )
    return _StepSpec(
        title=title,
        tool="write_document",
        rationale="A short companion page serves readers who will not read the full document.",
        instructions=(
            f"Write a one-page {label.lower()} on {profile.subject} that points back to "
            f"{profile.main_file}."
        ),
        arguments={"file_name": file_name, "title": f"{label}: {profile.subject_title}"},
        role=role,
    )


def _list_files_step() -> _StepSpec:
    return _StepSpec(
        title="Check the delivered files",
        tool="list_files",
        rationale="Listing the workspace confirms every planned file exists before the task ends.",
        instructions="List the workspace and compare it with the files the plan promised.",
        arguments={},
    )


def _review_step(profile: _Profile, path: str) -> _StepSpec:
    noun = "figures" if path == FIGURES_FILE else profile.deliverable
    return _StepSpec(
        title=f"Review the {noun}",
        tool="read_file",
        rationale="Reading the saved file back shows it was written in full and can be checked.",
        instructions=f"Read {path} and check it against the outline and the task.",
        arguments={"path": path},
    )


def _plan_summary(profile: _Profile, specs: Sequence[_StepSpec]) -> str:
    documents = [spec.arguments["file_name"] for spec in specs if spec.tool == "write_document"]
    if profile.kind == "compute":
        return (
            f"The offline model reads this task as {_KIND_LABELS[profile.kind]} on "
            f"{profile.subject}. A short Python script first extracts the task's key terms into "
            f"{KEY_TERMS_FILE}; the plan then saves the program as {profile.program_file} and runs "
            f"it, computes the task's figures into {FIGURES_FILE}, writes {_and_list(documents)} "
            "to explain them, and ends by reading the figures back."
        )
    return (
        f"The offline model reads this task as {_KIND_LABELS[profile.kind]} on {profile.subject}. "
        f"A short Python script first extracts the task's key terms into {KEY_TERMS_FILE}; the "
        f"plan then writes {_and_list(documents)}, with {profile.main_file} as the main "
        "deliverable, and ends by listing the workspace and reading a result back to check "
        "that everything promised was delivered."
    )


# ---------------------------------------------------------------------------------------------
# Revisions


def _revision_file(failed_step_index: int) -> str:
    return f"revision-step-{failed_step_index + 1}.md"


def _revision_note_step(
    failed_step_index: int, failed: plan_pb2.PlanStep, failure: str
) -> plan_pb2.PlanStep:
    number = failed_step_index + 1
    spec = _StepSpec(
        title="Record what failed",
        tool="write_document",
        rationale=(
            "A document keeps the failure and its cause in front of readers, where re-running "
            "the same step would likely fail the same way."
        ),
        instructions=(
            f'Step {number}, "{failed.title}" ({failed.tool}), failed, so its output is missing. '
            "Record what failed and why, and how the plan continues without it. "
            f"The step reported:\n\n{_fenced(failure)}"
        ),
        arguments={
            "file_name": _revision_file(failed_step_index),
            "title": f"What Changed After Step {number} Failed",
        },
    )
    return _plan_step(spec)


def _steps_that_survive(
    plan: plan_pb2.Plan, failed_step_index: int, note: plan_pb2.PlanStep
) -> list[plan_pb2.PlanStep]:
    """Return the later steps that run without the failed one: no code, no reads of lost files."""
    later = [step for step in plan.steps[failed_step_index + 1 :] if step.tool != "python"]
    written = {
        _string_argument(step, "file_name")
        for step in [*plan.steps[:failed_step_index], note, *later]
        if step.tool == "write_document"
    }
    return [
        step
        for step in later
        if step.tool != "read_file" or _string_argument(step, "path") in written
    ]


def _revision_summary(
    failed_step_index: int, failed: plan_pb2.PlanStep, failure: str, kept: int
) -> str:
    return (
        f'Step {failed_step_index + 1} ("{failed.title}") failed: {_failure_headline(failure)} '
        "The revised plan "
        f"records the failure in {_revision_file(failed_step_index)} and continues with {kept} "
        f"remaining {'step' if kept == 1 else 'steps'} that do not depend on the failed step's"
        " output."
    )


def _failure_headline(failure: str) -> str:
    """Return the failure's last non-empty line (where a traceback names the error), shortened."""
    lines = [line.strip() for line in failure.splitlines() if line.strip()]
    headline = lines[-1] if lines else "no message was given"
    if len(headline) > 200:
        headline = headline[:200].rstrip() + "..."
    return headline if headline.endswith((".", "!", "?")) else f"{headline}."


def _fenced(text: str) -> str:
    """Return `text` in a code fence longer than any run of backticks inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text.rstrip()}\n{fence}"


def _failure_block(instructions: str) -> str:
    match = re.search(r"(`{3,})text\n.*\n\1", instructions, flags=re.DOTALL)
    return match.group(0) if match else _fenced(instructions)


# ---------------------------------------------------------------------------------------------
# Python steps: task text enters the code only as `ascii()` literals.


def _literals(**values: object) -> str:
    """Return assignments whose values are `ascii()` literals, safe for any text."""
    return "".join(f"{name} = {value!a}\n" for name, value in values.items())


def _key_terms_code(profile: _Profile) -> str:
    return script_code(
        "key_terms",
        TASK_TEXT=profile.task_text,
        KIND=profile.kind,
        SUBJECT=profile.subject,
        OUTPUT=KEY_TERMS_FILE,
        WORD_PATTERN=_WORD_PATTERN,
        NOT_TERMS=tuple(sorted(_NOT_TERMS)),
        LIMIT=_KEY_TERM_LIMIT,
    )


def _figures_code(profile: _Profile) -> str:
    return script_code(
        "figures", TASK_TEXT=profile.task_text, OUTPUT=FIGURES_FILE, NUMBER_PATTERN=_NUMBER_PATTERN
    )


_VALUES = re.compile(r"^# values: .*?^# end of values\n", re.MULTILINE | re.DOTALL)


def script_code(name: str, **values: object) -> str:
    """The program `scripts/<name>.py` with its values block replaced by `values`."""
    source = (resources.files(scripts) / f"{name}.py").read_text(encoding="utf-8")
    code, replaced = _VALUES.subn(lambda _: _literals(**values), source, count=1)
    if not replaced:
        raise RuntimeError(f"scripts/{name}.py has no values block")
    return code


# ---------------------------------------------------------------------------------------------
# Documents


def _string_argument(step: plan_pb2.PlanStep, key: str) -> str:
    value = step.arguments.fields.get(key)
    if value is None or value.WhichOneof("kind") != "string_value":
        return ""
    return value.string_value


def _document(profile: _Profile, step: plan_pb2.PlanStep) -> str:
    file_name = _string_argument(step, "file_name")
    role = _document_role(profile, file_name)
    planned_title = next(
        (s.arguments["title"] for s in _step_specs(profile) if s.role == role), profile.main_title
    )
    title = " ".join((_string_argument(step, "title") or step.title or planned_title).split())
    writers: dict[str, Callable[[_Profile, str], str]] = {
        "outline": _outline_document,
        "takeaways": _takeaways_document,
        "checklist": _checklist_document,
        "faq": _faq_document,
        "main": _main_document,
    }
    if role == "revision":
        return _revision_document(profile, title, step)
    return writers[role](profile, title)


def _document_role(profile: _Profile, file_name: str) -> str:
    if re.fullmatch(r"revision-step-[0-9]+\.md", file_name):
        return "revision"
    for spec in _step_specs(profile):
        if spec.role and spec.arguments.get("file_name") == file_name:
            return spec.role
    return "main"


def _pieces(document: str, seed: str) -> list[str]:
    """Split the document into runs of 3 to 8 words that join back to it exactly."""
    tokens = re.findall(r"\S+\s*|\s+", document)
    sizes = [3 + byte % 6 for byte in hashlib.sha256(seed.encode("utf-8", "replace")).digest()]
    pieces: list[str] = []
    index = 0
    while index < len(tokens):
        size = sizes[len(pieces) % len(sizes)]
        pieces.append("".join(tokens[index : index + size]))
        index += size
    return pieces


def _pick(profile: _Profile, salt: str, options: Sequence[str]) -> str:
    """Choose a phrasing seeded by the task text, so variety never costs determinism."""
    digest = hashlib.sha256(f"{salt}\0{profile.task_text}".encode("utf-8", "replace")).digest()
    return options[digest[0] % len(options)]


def _blocks(*parts: str) -> str:
    return "\n\n".join(part.strip("\n") for part in parts if part) + "\n"


def _bullets(items: Sequence[str]) -> str:
    return "\n".join(f"- {item}" for item in items)


def _numbered(items: Sequence[str]) -> str:
    return "\n".join(f"{number}. {item}" for number, item in enumerate(items, 1))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    lines += [" | ".join(row) for row in rows]
    return "\n".join(f"| {line} |" for line in lines)


def _and_list(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"


def _article(noun: str) -> str:
    """Return the noun with "a" or "an" before it, as it is said ("an overview", "a guide")."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _terms_phrase(profile: _Profile) -> str:
    terms = [term for term, _count in profile.key_terms[:4]]
    return _and_list(terms) if terms else "the words of the task itself"


def _task_quote(profile: _Profile) -> str:
    text = profile.task_text.strip()
    if len(text) > _QUOTE_LIMIT:
        text = text[:_QUOTE_LIMIT].rstrip() + " ..."
    lines = text.splitlines() or ["(no task text)"]
    lines[0] = f"**Task:** {lines[0]}"
    return "\n".join(f"> {line}".rstrip() for line in lines)


def _delivered_files(profile: _Profile) -> list[str]:
    documents = [s.arguments["file_name"] for s in _step_specs(profile) if s.role]
    extras = [profile.program_file, FIGURES_FILE] if profile.kind == "compute" else []
    return [KEY_TERMS_FILE, *extras, *documents]


# Sections of the main document: heading, what it covers (for the outline), and its body.
_Section = tuple[str, str, Callable[[_Profile], str]]


def _main_sections(kind: str) -> tuple[_Section, ...]:
    return {
        "brief": _BRIEF_SECTIONS,
        "guide": _GUIDE_SECTIONS,
        "comparison": _COMPARISON_SECTIONS,
        "compute": _COMPUTE_SECTIONS,
        "generic": _GENERIC_SECTIONS,
    }[kind]


def _main_document(profile: _Profile, title: str) -> str:
    parts = [f"# {title}", _introduction(profile), _task_quote(profile)]
    for heading, _purpose, body in _main_sections(profile.kind):
        parts += [f"## {heading}", body(profile)]
    return _blocks(*parts)


def _introduction(profile: _Profile) -> str:
    d, s = profile.deliverable, profile.subject
    return _pick(
        profile,
        "introduction",
        [
            f"This {d} covers {s}. The offline model drafted it from the task's own words, so it "
            "is a structured starting point rather than a researched conclusion: claims are "
            "framed as things to confirm, and each section ends in points a reader can act on.",
            f"This {d} is about {s}. It was written by the offline model from nothing but the "
            "task text, so treat it as a well-organised first draft: it sets out the questions, "
            "the structure and the checks, and leaves the facts to be confirmed.",
        ],
    )


def _key_terms_body(profile: _Profile) -> str:
    if not profile.key_terms:
        return (
            "The task uses no distinctive terms, so this section is left for the reader: list "
            "the three words a newcomer would need defined before reading further."
        )
    reasons = [
        "It names the core of the subject; agree on its definition before comparing numbers.",
        "It sets the scope: findings that do not touch it belong in an appendix.",
        "It is where costs, benefits and risks tend to concentrate.",
        "It is the word readers are most likely to search for, so it is used consistently.",
        "It links the subject to neighbouring topics and marks the edge of the analysis.",
        "It is a likely source of disagreement, so assumptions about it are stated openly.",
    ]
    rows = [
        [f"**{term}**", str(count), reasons[index % len(reasons)]]
        for index, (term, count) in enumerate(profile.key_terms[:6])
    ]
    intro = (
        f"These are the words the task leans on most, as counted by the key-terms step "
        f"(`{KEY_TERMS_FILE}`). The rest of the {profile.deliverable} uses them in the same sense."
    )
    return _blocks(intro, _table(["Term", "Mentions in the task", "Why it matters"], rows))


def _method_body(profile: _Profile) -> str:
    files = ", ".join(f"`{name}`" for name in _delivered_files(profile))
    return _blocks(
        f"This {profile.deliverable} was written by the Mitosis offline model, which works "
        f"without network access. It took the subject ({profile.subject}) and the key terms "
        "from the task text, chose a structure suited to the kind of request, and filled it with "
        "reasoning a reader can check. It cites no external sources, so no statement here "
        "should be read as a measured fact.",
        f"The task delivers these files: {files}.",
    )


def _open_questions_body(profile: _Profile) -> str:
    return _bullets(
        [
            f"What time frame matters most for {profile.subject}: the next month, the next year, "
            "or the next five years?",
            "Who is the audience, and what do they already know?",
            f"Which of the key terms ({_terms_phrase(profile)}) is least settled, and what would "
            "settle it?",
            "What single piece of evidence would change the conclusion outright?",
        ]
    )


# Brief ---------------------------------------------------------------------------------------


def _brief_summary(profile: _Profile) -> str:
    d, s = profile.deliverable, profile.subject
    return _blocks(
        f"In short: the question behind this {d} is what a reader needs to know about {s} to "
        "make a sound decision, and what they still need to find out. It answers in three parts.",
        _bullets(
            [
                f"**What it is** - how this {d} defines {s}, and the terms that frame it "
                f"({_terms_phrase(profile)}).",
                f"**Where things stand** - the forces that shape {s} today and the signals "
                "worth watching.",
                "**What to do** - recommendations, each with a check that shows whether it worked.",
            ]
        ),
    )


def _brief_background(profile: _Profile) -> str:
    d, s = profile.deliverable, profile.subject
    return _blocks(
        f"Any discussion of {s} starts with scope. This {d} takes its scope from the task: it "
        f"concentrates on {_terms_phrase(profile)}, and leaves out neighbouring topics unless "
        "they change the conclusions. Where the task is silent - on geography, time frame or "
        f"audience - the {d} states the assumption it makes, so a reader can swap in their own.",
        "The background that matters most is usually the simplest: who is involved, what they "
        "are trying to achieve, and what has changed recently. Those three questions organise "
        "the rest of the document.",
    )


def _brief_landscape(profile: _Profile) -> str:
    s = profile.subject
    return _blocks(
        f"Five forces shape {s}. Each is stated as a question, because the answer depends on "
        "data this draft does not have.",
        _bullets(
            [
                f"**Demand** - who needs {s}, and is that need growing, stable or shrinking?",
                "**Supply** - who provides it, how concentrated are they, and how easily can "
                "newcomers enter?",
                "**Cost** - what drives the cost, and which of those drivers are likely to move?",
                "**Rules** - which regulations, standards or norms apply, and which are changing?",
                "**Practice** - which changes in technology or habits could reshape the field?",
            ]
        ),
        "Each line deserves a figure and a dated source before the document supports a decision.",
    )


def _brief_risks(profile: _Profile) -> str:
    s = profile.subject
    rows = [
        [
            "Demand",
            f"Unmet needs around {s} can be served early.",
            "Interest may be shallower than it looks.",
        ],
        ["Cost", "Falling costs widen the audience.", "A cost shock can erase thin margins."],
        ["Competition", "A clear niche is easier to defend.", "Larger players can copy quickly."],
        [
            "Regulation",
            "New standards can reward early movers.",
            "Rules can change the economics overnight.",
        ],
        [
            "Execution",
            "A small pilot gives evidence cheaply.",
            "Scaling up exposes hidden dependencies.",
        ],
    ]
    return _blocks(
        f"The table pairs each area with the upside and the downside it holds for {s}.",
        _table(["Area", "Opportunity", "Risk"], rows),
    )


def _brief_recommendations(profile: _Profile) -> str:
    d, s = profile.deliverable, profile.subject
    return _numbered(
        [
            f"**Define the decision.** Write down the decision this {d} should inform about {s}. "
            "*Check:* two readers describe it the same way.",
            "**Find two independent sources for every figure.** *Check:* no important number "
            "rests on a single source.",
            f"**Test the key terms** ({_terms_phrase(profile)}) with the people who will use the "
            "findings. *Check:* nobody is surprised by a definition.",
            "**Size the opportunity and the risk as ranges** - low, expected and high. *Check:* "
            "the decision holds across the range, or the document says where it flips.",
            "**Set a date to revisit.** *Check:* a named owner reviews the findings on that date.",
        ]
    )


_BRIEF_SECTIONS: tuple[_Section, ...] = (
    ("Summary", "the question, and the answer in three parts", _brief_summary),
    ("Background", "scope, assumptions and the context that matters", _brief_background),
    ("Key Terms", "the words the task leans on, and why each matters", _key_terms_body),
    ("Current Landscape", "the forces that shape the subject today", _brief_landscape),
    ("Opportunities and Risks", "upside and downside, area by area, in a table", _brief_risks),
    ("Recommendations", "what to do next, each with a check", _brief_recommendations),
    ("Open Questions", "what the draft cannot settle yet", _open_questions_body),
    ("Method and Sources", "how the document was made, and the files delivered", _method_body),
)


# Guide ---------------------------------------------------------------------------------------


def _guide_goal(profile: _Profile) -> str:
    return _blocks(
        f"The goal is a clear, repeatable path through {profile.subject}: what to prepare, what "
        "to do in which order, and how to tell that it worked. It is written for someone doing "
        "this for the first time, and it flags the points where an experienced person would "
        "slow down.",
        "Success looks like this:",
        _bullets(
            [
                "the outcome is written down before any work starts;",
                "every step has an owner, a rough duration and a way to check it;",
                "problems surface during a small trial, not halfway through the real thing.",
            ]
        ),
    )


def _guide_before(profile: _Profile) -> str:
    s = profile.subject
    return _bullets(
        [
            f"**Time** - block out more than you expect; first attempts at {s} usually take "
            "longer than planned.",
            "**Budget** - set a ceiling, and a small reserve for surprises.",
            "**Tools and materials** - list them and check they are at hand before starting.",
            "**People** - decide who does what, and who has the final say.",
            f"**Constraints** - note anything that limits {s}: rules, deadlines, space or "
            "dependencies on others.",
        ]
    )


def _guide_steps(profile: _Profile) -> str:
    s = profile.subject
    return _numbered(
        [
            f"**Clarify the outcome.** Describe in one sentence what finished looks like for {s}.",
            f"**Map what you have.** Take stock of resources, knowledge and gaps around "
            f"{_terms_phrase(profile)}.",
            "**Plan the sequence.** Order the work so that each step unblocks the next, and mark "
            "the steps that cannot be undone.",
            "**Run a small trial.** Try the riskiest step on a small scale first and note what "
            "surprised you.",
            "**Carry out the full plan.** Work through the sequence, checking each step before "
            "moving on.",
            "**Review and record.** Write down what worked, what did not, and what to change "
            "next time.",
        ]
    )


def _guide_mistakes(profile: _Profile) -> str:
    rows = [
        [
            "Starting without a clear outcome",
            "Enthusiasm outruns planning",
            "Write the outcome down first",
        ],
        ["Skipping the trial run", "It feels slower", "Trial the riskiest step only"],
        ["Underestimating time", "Only the happy path is counted", "Add a reserve of a quarter"],
        ["Not recording decisions", "They seem obvious at the time", "Keep a short running log"],
    ]
    return _blocks(
        f"Most problems with {profile.subject} come from a handful of habits:",
        _table(["Mistake", "Why it happens", "How to avoid it"], rows),
    )


def _guide_timeline(profile: _Profile) -> str:
    rows = [
        ["Prepare", "Outcome, resources, constraints", "about 20%"],
        ["Trial", "Small-scale run of the riskiest step", "about 15%"],
        ["Do", "The full sequence, step by step", "about 45%"],
        ["Review", "Checks, notes and lessons learned", "about 20%"],
    ]
    return _blocks(
        f"A rough split of effort for {profile.subject}; adjust the shares to your situation.",
        _table(["Phase", "What happens", "Share of effort"], rows),
    )


def _guide_next(profile: _Profile) -> str:
    return _bullets(
        [
            "Turn the step-by-step list into dated tasks with owners.",
            "Work through the companion checklist before starting.",
            f"Share this {profile.deliverable} with one person who has done it before, and ask "
            "what is missing.",
        ]
    )


_GUIDE_SECTIONS: tuple[_Section, ...] = (
    ("Goal", "what success looks like", _guide_goal),
    ("Before You Start", "time, budget, tools, people and constraints", _guide_before),
    ("Step by Step", "the sequence, from outcome to review", _guide_steps),
    ("Key Terms", "the words the task leans on, and why each matters", _key_terms_body),
    ("Common Mistakes", "what usually goes wrong, in a table", _guide_mistakes),
    ("Timeline", "a rough split of effort by phase", _guide_timeline),
    ("Next Steps", "how to turn the guide into action", _guide_next),
    ("Method and Sources", "how the document was made, and the files delivered", _method_body),
)


# Comparison ----------------------------------------------------------------------------------


def _comparison_summary(profile: _Profile) -> str:
    return _blocks(
        f"This {profile.deliverable} sets {_and_list(list(profile.options))} side by side. It "
        "does not pick a winner from thin air: it names the criteria that should decide, gives "
        "each a weight, and shows how to score the options so the choice is explicit and can be "
        "revisited.",
        _bullets(
            [
                "Decide the weights before scoring, so the scores cannot bend them.",
                "Score each option from 1 (poor) to 5 (strong) on every criterion.",
                "Multiply, add up, and then sanity-check the result against intuition.",
            ]
        ),
    )


def _comparison_options(profile: _Profile) -> str:
    return _numbered(
        [
            f"**{option}** - considered on its own terms first, then against the others."
            for option in profile.options
        ]
    )


def _comparison_table(profile: _Profile) -> str:
    criteria = [
        ("Upfront cost", "20%"),
        ("Running cost", "20%"),
        ("Ease of adoption", "15%"),
        ("Flexibility", "15%"),
        ("Risk", "15%"),
        ("Fit with the task", "15%"),
    ]
    rows = [[name, weight, *("score 1-5" for _ in profile.options)] for name, weight in criteria]
    return _blocks(
        "Fill in one score per cell; the weights add up to 100%.",
        _table(["Criterion", "Weight", *profile.options], rows),
    )


def _comparison_fit(profile: _Profile) -> str:
    parts: list[str] = []
    for option in profile.options:
        parts += [
            f"### {option}",
            _bullets(
                [
                    f"**Choose {option} when** its strongest criteria are the ones weighted "
                    "highest above.",
                    f"**Be careful with {option} if** the decision rests on a criterion nobody "
                    "involved has first-hand experience of.",
                    f"**Evidence to gather:** a recent, like-for-like example of {option} in a "
                    "situation close to this one.",
                ]
            ),
        ]
    return _blocks(*parts)


def _comparison_recommendation(profile: _Profile) -> str:
    return _blocks(
        f"Without data, the honest recommendation on {profile.subject} is a process rather "
        "than a verdict:",
        _numbered(
            [
                "Agree the weights with the people affected by the decision.",
                "Score every option with evidence noted next to each score.",
                "Pick the highest total, unless one option fails a must-have outright.",
                "Write down what would make you switch, and check it after three months.",
            ]
        ),
    )


_COMPARISON_SECTIONS: tuple[_Section, ...] = (
    ("Summary", "what is compared and how the choice is made", _comparison_summary),
    ("Options Compared", "the options, as the task names them", _comparison_options),
    ("Comparison Table", "weighted criteria with a score per option", _comparison_table),
    ("Where Each Option Fits", "when to choose each option, and what to check", _comparison_fit),
    ("Key Terms", "the words the task leans on, and why each matters", _key_terms_body),
    ("Recommendation", "a decision process that can be revisited", _comparison_recommendation),
    ("Open Questions", "what the draft cannot settle yet", _open_questions_body),
    ("Method and Sources", "how the document was made, and the files delivered", _method_body),
)


# Compute -------------------------------------------------------------------------------------


def _compute_problem(profile: _Profile) -> str:
    return _blocks(
        f"The task on {profile.subject} calls for code. Before any code is "
        "trusted, the problem is restated in plain words: what goes in, what should come out, "
        "and how a reader can tell the output is right.",
        _bullets(
            [
                f"**Inputs** - the values the task states, plus any assumptions about "
                f"{_terms_phrase(profile)}.",
                "**Output** - the figures, saved as JSON so other tools can read them.",
                "**Correctness** - checks that can be run by hand on a small case.",
            ]
        ),
    )


def _compute_approach(profile: _Profile) -> str:
    return _blocks(
        "The work is split into small, separately checkable steps, each done by a short "
        "standard-library script that runs inside the task's workspace:",
        _numbered(
            [
                f"extract the key terms into `{KEY_TERMS_FILE}`;",
                f"save the program as `{profile.program_file}` and run it;",
                f"collect the numbers the task states and compute summary figures into "
                f"`{FIGURES_FILE}`;",
                "explain the method and results in this document, and read the figures back.",
            ]
        ),
        f"The program runs on its own: `python {profile.program_file}` prints its results, and "
        "a number on the command line replaces the default it takes from the task.",
        "Reading the saved figures back is a one-line program:",
        "```python\nimport json\nfrom pathlib import Path\n\n"
        f'figures = json.loads(Path("{FIGURES_FILE}").read_text(encoding="utf-8"))\n'
        'print(figures["count"], "numbers found")\n```',
    )


def _compute_inputs(profile: _Profile) -> str:
    numbers = _numbers(profile.task_text)
    if not numbers:
        return (
            "The task states no numbers, so the figures step records an empty list with a note "
            "saying so, and the method below is described rather than run on data. Supplying "
            "example values is the quickest way to make the results concrete."
        )
    rows = [[str(index), f"`{value}`"] for index, value in enumerate(numbers[:12], 1)]
    more = f" (the first 12 of {len(numbers)})" if len(numbers) > 12 else ""
    return _blocks(f"The task states these numbers{more}:", _table(["#", "Value as written"], rows))


def _compute_method(profile: _Profile) -> str:
    return _blocks(
        "Each number is read as a decimal value; values too large to represent are dropped "
        "rather than allowed to poison the totals. The script then computes:",
        _table(
            ["Figure", "Definition"],
            [
                ["count", "how many numbers the task states"],
                ["sum", "all values added together"],
                ["mean", "the sum divided by the count"],
                ["median", "the middle value once sorted"],
                ["min / max", "the smallest and largest value"],
            ],
        ),
    )


def _compute_results(profile: _Profile) -> str:
    values = [float(text) for text in _numbers(profile.task_text)]
    values = [value for value in values if abs(value) != float("inf")]
    if not values:
        return (
            f"`{FIGURES_FILE}` records a count of 0 and a note that the task states no numbers;"
            " there is nothing to total yet."
        )
    rows = [
        ["count", str(len(values))],
        ["sum", f"{sum(values):.6g}"],
        ["mean", f"{sum(values) / len(values):.6g}"],
        ["min", f"{min(values):.6g}"],
        ["max", f"{max(values):.6g}"],
    ]
    return _blocks(
        f"Expected values, which `{FIGURES_FILE}` should match to the precision shown:",
        _table(["Figure", "Value"], rows),
    )


def _compute_checks(profile: _Profile) -> str:
    return _bullets(
        [
            "Recompute one figure by hand and compare it with the JSON file.",
            "Change one input and confirm that only the figures depending on it move.",
            "Run the script twice and confirm the output is byte-identical.",
            f"Confirm the results still answer the task as stated: {profile.subject}.",
        ]
    )


def _compute_limits(profile: _Profile) -> str:
    return (
        "The offline model does not interpret units, percentages or dates: a number is a number. "
        f"If the task on {profile.subject} depends on a formula, that formula should be written "
        "out and checked before the results are relied on."
    )


_COMPUTE_SECTIONS: tuple[_Section, ...] = (
    ("Problem", "inputs, output and what correct means", _compute_problem),
    ("Approach", "the steps and the scripts that run them", _compute_approach),
    ("Inputs", "the numbers the task states", _compute_inputs),
    ("Method", "how each figure is computed", _compute_method),
    ("Results", "the expected figures", _compute_results),
    ("Checks", "how to verify the results", _compute_checks),
    ("Key Terms", "the words the task leans on, and why each matters", _key_terms_body),
    ("Limitations", "what the computation does not cover", _compute_limits),
    ("Method and Sources", "how the document was made, and the files delivered", _method_body),
)


# Generic -------------------------------------------------------------------------------------


def _generic_summary(profile: _Profile) -> str:
    return _blocks(
        f"This {profile.deliverable} gathers what a reader should consider about "
        f"{profile.subject}: the context, the main points, the trade-offs and the next steps.",
        _bullets(
            [
                f"It is organised around {_terms_phrase(profile)}.",
                "It states assumptions openly, so they can be challenged.",
                "It ends with concrete next steps rather than a conclusion.",
            ]
        ),
    )


def _generic_background(profile: _Profile) -> str:
    return (
        f"Understanding {profile.subject} starts with three questions: who is involved, what "
        "they want, and what has changed recently. The task does not answer them, so this "
        "overview treats them as the first things to establish, and keeps the rest general "
        "enough to stay true whatever the answers turn out to be."
    )


def _generic_assumptions(profile: _Profile) -> str:
    return _blocks(
        f"The task leaves a lot open, so this {profile.deliverable} makes its assumptions "
        "explicit. Each one is easy to replace with better information:",
        _bullets(
            [
                "The reader is intelligent but new to the subject, so terms are explained.",
                f"The interest in {profile.subject} is practical: it should lead to a decision "
                "or an action, not only to understanding.",
                "Recent changes matter more than history, unless history explains the present.",
                "Where a figure would be needed, a range is more honest than a single number.",
            ]
        ),
    )


def _generic_points(profile: _Profile) -> str:
    s = profile.subject
    return _numbered(
        [
            f"**Definition** - say exactly what {s} includes and excludes.",
            "**Purpose** - say why it matters now, and to whom.",
            "**Evidence** - list what is known, what is assumed, and how each was learned.",
            "**Options** - name at least two ways forward, including doing nothing.",
            "**Consequences** - for each option, what changes and who notices.",
        ]
    )


def _generic_considerations(profile: _Profile) -> str:
    rows = [
        ["Effort", "How much work is needed", "Estimate in days, not adjectives"],
        ["Cost", "What it costs to start and to keep going", "Separate one-off from recurring"],
        ["Risk", "What could go wrong", "Name the worst plausible case"],
        ["Benefit", "What improves, and for whom", "Prefer measurable outcomes"],
    ]
    return _blocks(
        f"Weigh these before acting on {profile.subject}:",
        _table(["Consideration", "Question", "Tip"], rows),
    )


def _generic_next(profile: _Profile) -> str:
    return _bullets(
        [
            "Answer the three background questions.",
            "Check the main points against one knowledgeable person.",
            f"Decide on one concrete action on {profile.subject} and a date to review it.",
        ]
    )


_GENERIC_SECTIONS: tuple[_Section, ...] = (
    ("Summary", "what the document covers, in brief", _generic_summary),
    ("Background", "the questions that frame the subject", _generic_background),
    ("Assumptions", "what the document takes for granted, stated openly", _generic_assumptions),
    ("Key Terms", "the words the task leans on, and why each matters", _key_terms_body),
    ("Main Points", "definition, purpose, evidence, options, consequences", _generic_points),
    ("Considerations", "effort, cost, risk and benefit, in a table", _generic_considerations),
    ("Open Questions", "what the draft cannot settle yet", _open_questions_body),
    ("Next Steps", "concrete actions", _generic_next),
    ("Method and Sources", "how the document was made, and the files delivered", _method_body),
)


# Companion documents -------------------------------------------------------------------------


def _outline_document(profile: _Profile, title: str) -> str:
    sections = [
        f"**{heading}** - {purpose}." for heading, purpose, _ in _main_sections(profile.kind)
    ]
    files = [[f"`{name}`", _file_purpose(profile, name)] for name in _delivered_files(profile)]
    terms = [f"{term} ({count})" for term, count in profile.key_terms] or ["(none found)"]
    return _blocks(
        f"# {title}",
        "## Purpose",
        f"This outline plans `{profile.main_file}`, {_article(profile.deliverable)} on "
        f"{profile.subject}. It fixes the sections and their order before any prose is "
        "written, so the draft can be checked against it.",
        "## Sections",
        _numbered(sections),
        "## Deliverables",
        _table(["File", "What it holds"], files),
        "## Key Terms",
        _bullets(terms),
    )


def _file_purpose(profile: _Profile, name: str) -> str:
    purposes = {
        KEY_TERMS_FILE: "the task's key terms, counted by a script",
        FIGURES_FILE: "figures computed from the task's numbers",
        profile.program_file: "the program the task asks for, ready to run",
        OUTLINE_FILE: "this outline",
        profile.main_file: f"the {profile.deliverable} itself",
    }
    return purposes.get(name, "a one-page companion to the main document")


def _takeaways_document(profile: _Profile, title: str) -> str:
    s = profile.subject
    return _blocks(
        f"# {title}",
        f"A one-page companion to `{profile.main_file}`.",
        "## In One Paragraph",
        f"The decision about {s} turns on a few things: a clear definition, sound figures for "
        f"the forces that shape it, and honest ranges for the upside and the downside. The "
        f"{profile.deliverable} frames each of these as a question to answer before acting.",
        "## Five Takeaways",
        _numbered(
            [
                "Agree what the decision is before debating the answer.",
                f"Use the key terms ({_terms_phrase(profile)}) consistently.",
                "Treat every figure as a range until two sources agree.",
                "Pair each opportunity with the risk that mirrors it.",
                "Set a date to revisit, with a named owner.",
            ]
        ),
        "## What to Watch",
        _bullets(["Changes in cost", "Changes in rules", "Changes in who is asking, and why"]),
        "## Read Next",
        f"The full {profile.deliverable}: `{profile.main_file}`.",
    )


def _checklist_document(profile: _Profile, title: str) -> str:
    return _blocks(
        f"# {title}",
        f"Tick these off while working through `{profile.main_file}`.",
        "## Before You Start",
        _bullets(
            [
                "[ ] The outcome is written in one sentence",
                "[ ] Time, budget and a small reserve are set",
                "[ ] Tools and materials are at hand",
                "[ ] Roles are agreed",
            ]
        ),
        "## While You Work",
        _bullets(
            [
                "[ ] The riskiest step was tried on a small scale",
                "[ ] Each step is checked before the next begins",
                "[ ] Decisions are noted as they are made",
            ]
        ),
        "## When You Finish",
        _bullets(
            [
                "[ ] The outcome matches the sentence written at the start",
                "[ ] Lessons learned are recorded",
                "[ ] Loose ends have owners",
            ]
        ),
        "## Done When",
        f"Every box is ticked and someone else could repeat {profile.subject} from your notes.",
    )


def _faq_document(profile: _Profile, title: str) -> str:
    options = _and_list(list(profile.options))
    return _blocks(
        f"# {title}",
        f"Short answers about comparing {options}; the detail is in `{profile.main_file}`.",
        "## Choosing",
        "### Which option is better?",
        "The one with the highest weighted score, unless it fails a must-have outright. The "
        "comparison table makes the weights explicit so that the answer can be argued about.",
        "### What if the scores are close?",
        "Then the choice matters less than it seems: pick the option that is easier to reverse.",
        "## Costs and Risks",
        "### Which costs are easy to miss?",
        "Running costs, switching costs, and the time it takes people to learn something new.",
        "### How do I judge risk without data?",
        "Ask what the worst plausible outcome is for each option, and how you would notice it.",
        "## Next Steps",
        "### What should I do first?",
        f"Agree the weights, then gather one like-for-like example for each of {options}.",
    )


def _revision_document(profile: _Profile, title: str, step: plan_pb2.PlanStep) -> str:
    return _blocks(
        f"# {title}",
        f"A step of the plan for {profile.subject} did not finish. This note records what "
        "failed and how the task continues, so readers know which results to trust.",
        "## What Failed",
        "The step reported:",
        _failure_block(step.instructions),
        "## How the Plan Continues",
        _bullets(
            [
                "Steps that needed the failed step's output are dropped rather than retried.",
                "Steps that do not depend on it run as planned.",
                "The file list at the end of the task shows exactly what was delivered.",
            ]
        ),
        "## What to Do",
        _bullets(
            [
                "Read the error above; it usually names the cause.",
                "Fix the cause, or adjust the task text, and run the task again.",
            ]
        ),
    )
