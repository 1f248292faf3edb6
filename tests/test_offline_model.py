"""Tests for the offline model: deterministic plans, safe python steps, streamed documents."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToDict

from mitosis.models.base import TOOLS, PlanningModel, WritingModel
from mitosis.models.offline import OfflineModel
from mitosis.v1 import plan_pb2, task_pb2, task_service_pb2, task_service_pb2_grpc
from tests.support.watch import watch_all

MARKET_BRIEF = "Write a short market brief on home solar batteries"
HOSTILE = (
    "Write a report on '''triple''' and \"\"\"double\"\"\" quotes, back\\slashes \\n \\\\ "
    "and <script>alert('x')</script>'); import os; os.system('x')#\n"
    "\"); open('../escaped-single', 'w')#\n"
    '"""; open("../escaped-triple", "w"); """ {0} {task} %s \U0001f600 \u00e9t\u00e9'
)
TASKS = [
    MARKET_BRIEF,
    "Compare heat pumps and gas boilers for a small house",
    "PostgreSQL vs. MySQL for analytics?",
    "How to grow tomatoes in a small garden",
    "Plan a three-day trip to Lisbon",
    "Write a Python script that computes compound interest on 1000 at 5% for 10 years",
    "Tell me about octopuses",
    "Write a checklist for moving house",
    "",
    "!!! ??? ...",
    "\u65e5\u672c\u306e\u7d4c\u6e08\u306b\u3064\u3044\u3066\u306e\u30ec\u30dd\u30fc\u30c8",
    "word " * 500,
    HOSTILE,
]
SAFE_FILE = re.compile(r"(?:[a-z0-9-]+/)?[a-z0-9][a-z0-9_-]*\.(?:md|json|py)")


def argument_dict(step: plan_pb2.PlanStep) -> dict[str, object]:
    return MessageToDict(step.arguments)


async def document_of(model: OfflineModel, task: str, step: plan_pb2.PlanStep) -> str:
    return "".join([piece async for piece in model.write_document(task, step)])


async def pieces_of(model: OfflineModel, task: str, step: plan_pb2.PlanStep) -> list[str]:
    return [piece async for piece in model.write_document(task, step)]


def steps_using(plan: plan_pb2.Plan, tool: str) -> list[plan_pb2.PlanStep]:
    return [step for step in plan.steps if step.tool == tool]


def main_step(plan: plan_pb2.Plan) -> plan_pb2.PlanStep:
    """The main deliverable is the write_document step the plan reviews, or the largest one."""
    documents = steps_using(plan, "write_document")
    return next(step for step in documents if step.title.startswith("Draft the "))


def headings(document: str, level: int) -> list[str]:
    return re.findall(rf"^{'#' * level} (.+)$", document, flags=re.MULTILINE)


@pytest.fixture
def model() -> OfflineModel:
    return OfflineModel(pace=0)


def test_satisfies_both_protocols(model: OfflineModel) -> None:
    planner: PlanningModel = model
    writer: WritingModel = model
    assert planner.name == writer.name == "offline"


def test_rejects_negative_pace() -> None:
    with pytest.raises(ValueError, match="pace"):
        OfflineModel(pace=-1)


@pytest.mark.parametrize("task", TASKS)
async def test_same_text_gives_the_same_plan(task: str) -> None:
    first = await OfflineModel(pace=0).create_plan(task)
    second = await OfflineModel(pace=0).create_plan(task)
    assert first.SerializeToString(deterministic=True) == second.SerializeToString(
        deterministic=True
    )


def test_plan_and_documents_do_not_depend_on_hash_seed() -> None:
    # Set iteration order changes with PYTHONHASHSEED; output must not.
    script = (
        "import asyncio, hashlib, sys\n"
        "from mitosis.models.offline import OfflineModel\n"
        "async def main():\n"
        "    model = OfflineModel(pace=0)\n"
        "    digest = hashlib.sha256()\n"
        "    for task in sys.argv[1:]:\n"
        "        plan = await model.create_plan(task)\n"
        "        digest.update(plan.SerializeToString(deterministic=True))\n"
        "        for step in plan.steps:\n"
        "            if step.tool == 'write_document':\n"
        "                async for piece in model.write_document(task, step):\n"
        "                    digest.update(piece.encode('utf-8', 'surrogatepass'))\n"
        "    print(digest.hexdigest())\n"
        "asyncio.run(main())\n"
    )
    tasks = [MARKET_BRIEF, "Compare Rust, Go and Zig", HOSTILE]
    outputs = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", script, *tasks],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        outputs.add(result.stdout.strip())
    assert len(outputs) == 1


@pytest.mark.parametrize("task", TASKS)
async def test_plan_has_valid_steps_and_arguments(model: OfflineModel, task: str) -> None:
    plan = await model.create_plan(task)
    assert plan.model == "offline"
    assert plan.summary.strip()
    assert 3 <= len(plan.steps) <= 6
    for step in plan.steps:
        assert step.tool in TOOLS
        assert step.title.strip()
        assert "\n" not in step.title
        assert step.rationale.strip()
        assert step.instructions.strip()
        arguments = argument_dict(step)
        if step.tool == "write_document":
            assert set(arguments) == {"file_name", "title"}
            assert isinstance(arguments["title"], str)
            assert arguments["title"].strip()
        elif step.tool == "python":
            assert set(arguments) == {"code"}
            ast.parse(str(arguments["code"]))
        elif step.tool == "read_file":
            assert set(arguments) == {"path"}
        else:
            assert arguments == {}
    assert steps_using(plan, "python")
    assert steps_using(plan, "write_document")


@pytest.mark.parametrize("task", TASKS)
async def test_file_names_are_safe_and_distinct(model: OfflineModel, task: str) -> None:
    plan = await model.create_plan(task)
    names = [str(argument_dict(step)["file_name"]) for step in steps_using(plan, "write_document")]
    paths = [str(argument_dict(step)["path"]) for step in steps_using(plan, "read_file")]
    for name in names + paths:
        assert SAFE_FILE.fullmatch(name), name
        assert len(name) <= 64, name
    assert len(names) == len(set(names))


async def test_market_brief_plan(model: OfflineModel) -> None:
    plan = await model.create_plan(MARKET_BRIEF)
    outline = [
        (
            step.tool,
            step.title,
            argument_dict(step).get("file_name") or argument_dict(step).get("path"),
        )
        for step in plan.steps
    ]
    assert outline == [
        ("python", "Extract the key terms", None),
        ("write_document", "Outline the market brief", "outline.md"),
        ("write_document", "Draft the market brief", "home-solar-batteries-market-brief.md"),
        ("write_document", "Summarise the key takeaways", "home-solar-batteries-key-takeaways.md"),
        ("list_files", "Check the delivered files", None),
        ("read_file", "Review the market brief", "home-solar-batteries-market-brief.md"),
    ]
    assert argument_dict(plan.steps[2])["title"] == "Home Solar Batteries: Market Brief"
    assert "home solar batteries" in plan.summary


@pytest.mark.parametrize(
    ("task", "main_file", "companion"),
    [
        (
            "Compare heat pumps and gas boilers for a small house",
            "heat-pumps-and-gas-boilers-comparison.md",
            "heat-pumps-and-gas-boilers-faq.md",
        ),
        (
            "How to grow tomatoes in a small garden",
            "how-to-grow-tomatoes-in-a-small-garden-guide.md",
            "how-to-grow-tomatoes-in-a-small-garden-checklist.md",
        ),
        ("Plan a three-day trip to Lisbon", "three-day-trip-to-lisbon-plan.md", None),
        ("Tell me about octopuses", "octopuses-overview.md", None),
        ("", "task-overview.md", None),
    ],
)
async def test_plan_follows_the_kind_of_task(
    model: OfflineModel, task: str, main_file: str, companion: str | None
) -> None:
    plan = await model.create_plan(task)
    names = [argument_dict(step)["file_name"] for step in steps_using(plan, "write_document")]
    assert argument_dict(main_step(plan))["file_name"] == main_file
    assert names[0] == "outline.md"
    if companion is not None:
        assert companion in names


async def test_compute_task_writes_a_program_runs_it_and_computes_figures(
    model: OfflineModel,
) -> None:
    plan = await model.create_plan("Write a Python script that computes compound interest on 1000")
    assert [step.title for step in plan.steps] == [
        "Extract the key terms",
        "Write the program",
        "Run the program",
        "Work through the numbers",
        "Draft the script write-up",
        "Review the figures",
    ]
    assert argument_dict(plan.steps[-1]) == {"path": "notes/figures.json"}
    assert "compound_interest.py" in plan.summary


def run_plan_python(plan: plan_pb2.Plan, workspace: Path) -> list[str]:
    """Run the plan's python steps in order in `workspace`; return each one's stdout."""
    outputs = []
    for step in steps_using(plan, "python"):
        result = run_code(str(argument_dict(step)["code"]), workspace)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        outputs.append(result.stdout)
    return outputs


async def test_a_task_asking_for_code_delivers_a_runnable_py_file_that_a_step_runs(
    model: OfflineModel, tmp_path: Path
) -> None:
    plan = await model.create_plan("Write a Python script that computes prime numbers")
    outputs = run_plan_python(plan, tmp_path)

    program = tmp_path / "primes.py"
    assert outputs[1].splitlines() == [
        "Wrote primes.py: 33 lines of Python.",
        "Run it with: python primes.py",
    ]
    run = outputs[2].splitlines()
    assert run[:3] == [
        "$ python primes.py",
        "25 prime numbers up to 100:",
        "  2 3 5 7 11 13 17 19 23 29",
    ]
    # The delivered file runs on its own, and takes a limit on the command line.
    alone = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-I", str(program), "10"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert alone.stdout == "4 prime numbers up to 10:\n  2 3 5 7\n"


@pytest.mark.parametrize(
    ("task", "file_name", "first_output"),
    [
        (
            "Write a script that prints the first 10 Fibonacci numbers",
            "fibonacci.py",
            "The first 10 Fibonacci numbers:",
        ),
        (
            "Write code to calculate the factorial of 12",
            "factorials.py",
            "Factorials from 0! to 12!:",
        ),
        (
            "Write a Python script that computes compound interest on 1000 at 5% for 10 years",
            "compound_interest.py",
            "1,000.00 at 5% a year, compounded yearly, for 10 years:",
        ),
        (
            "Write a Python script that averages 3, 4 and 11",
            "number_summary.py",
            "Summary of 3 numbers:",
        ),
    ],
)
async def test_each_program_takes_the_task_numbers_as_its_defaults(
    model: OfflineModel, tmp_path: Path, task: str, file_name: str, first_output: str
) -> None:
    plan = await model.create_plan(task)
    outputs = run_plan_python(plan, tmp_path)
    assert (tmp_path / file_name).is_file()
    assert outputs[2].splitlines()[:2] == [f"$ python {file_name}", first_output]


async def test_figures_of_a_task_without_numbers_say_why_they_are_empty(
    model: OfflineModel, tmp_path: Path
) -> None:
    plan = await model.create_plan("Write a Python script that computes prime numbers")
    outputs = run_plan_python(plan, tmp_path)
    figures = json.loads((tmp_path / "notes" / "figures.json").read_text(encoding="utf-8"))
    assert figures["count"] == 0
    assert figures["note"] == "the task states no numbers, so there is nothing to compute"
    assert outputs[3].splitlines()[0] == (
        "No figures: the task states no numbers, so there is nothing to compute."
    )


async def test_generic_task_has_no_companion(model: OfflineModel) -> None:
    plan = await model.create_plan("Tell me about octopuses")
    assert len(steps_using(plan, "write_document")) == 2


def run_code(code: str, workspace: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", "-c", code],
        cwd=workspace,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=30,
    )


def names_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def all_files(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


@pytest.mark.parametrize(
    "task",
    [
        MARKET_BRIEF,
        "Write a Python script that computes compound interest on 1000 at 5% for 10 years",
        "",
        HOSTILE,
    ],
)
async def test_python_steps_run_inside_the_workspace(
    model: OfflineModel, task: str, tmp_path: Path
) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    plan = await model.create_plan(task)
    for step in steps_using(plan, "python"):
        result = run_code(str(argument_dict(step)["code"]), workspace)
        assert result.returncode == 0, result.stderr
        assert len(result.stdout.strip().splitlines()) >= 2
        assert result.stderr == ""
    assert names_in(tmp_path) == ["workspace"]
    produced = all_files(workspace)
    assert "notes/key_terms.json" in produced
    programs = {name for name in produced if name.endswith(".py")}
    assert produced - programs <= {"notes/key_terms.json", "notes/figures.json"}
    assert len(programs) == (1 if "script" in task else 0)
    for name in produced - programs:
        record = json.loads((workspace / name).read_text(encoding="utf-8"))
        assert record["task"] == task


async def test_hostile_text_is_data_in_the_code_and_the_json(
    model: OfflineModel, tmp_path: Path
) -> None:
    plan = await model.create_plan(HOSTILE)
    code = str(argument_dict(plan.steps[0])["code"])
    assignments = {
        node.targets[0].id: node.value
        for node in ast.parse(code).body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }
    task_literal = assignments["TASK_TEXT"]
    assert isinstance(task_literal, ast.Constant)
    assert task_literal.value == HOSTILE
    assert code.isascii()

    result = run_code(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path.parent / "escaped-single").exists()
    assert not (tmp_path.parent / "escaped-triple").exists()
    record = json.loads((tmp_path / "notes" / "key_terms.json").read_text(encoding="utf-8"))
    assert record["task"] == HOSTILE
    terms = [item["term"] for item in record["key_terms"]]
    assert "script" not in terms  # kind words are not key terms
    assert "quotes" in terms


async def test_key_terms_script_ranks_the_task_words(model: OfflineModel, tmp_path: Path) -> None:
    task = "Brief on solar batteries: solar panels, solar tariffs and batteries for homes"
    plan = await model.create_plan(task)
    result = run_code(str(argument_dict(plan.steps[0])["code"]), tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "notes" / "key_terms.json").read_text(encoding="utf-8"))
    assert record["key_terms"][:2] == [
        {"term": "solar", "count": 3},
        {"term": "batteries", "count": 2},
    ]
    assert "solar" in result.stdout


async def test_figures_script_computes_from_the_task_numbers(
    model: OfflineModel, tmp_path: Path
) -> None:
    plan = await model.create_plan("Write a script to calculate the mean of 2, 4 and 9")
    figures_step = [step for step in steps_using(plan, "python") if "numbers" in step.title]
    result = run_code(str(argument_dict(figures_step[0])["code"]), tmp_path)
    assert result.returncode == 0, result.stderr
    figures = json.loads((tmp_path / "notes" / "figures.json").read_text(encoding="utf-8"))
    assert figures["numbers"] == [2.0, 4.0, 9.0]
    assert figures["mean"] == 5.0
    assert figures["median"] == 4.0


@pytest.mark.parametrize("task", TASKS)
async def test_same_text_gives_the_same_documents(task: str) -> None:
    first_model, second_model = OfflineModel(pace=0), OfflineModel(pace=0)
    plan = await first_model.create_plan(task)
    for step in steps_using(plan, "write_document"):
        first = await pieces_of(first_model, task, step)
        second = await document_of(second_model, task, step)
        assert "".join(first) == second
        assert len(first) > 10


async def test_pieces_are_a_few_words_each(model: OfflineModel) -> None:
    plan = await model.create_plan(MARKET_BRIEF)
    pieces = await pieces_of(model, MARKET_BRIEF, main_step(plan))
    counts = [len(piece.split()) for piece in pieces]
    assert all(3 <= count <= 8 for count in counts[:-1])
    assert 1 <= counts[-1] <= 8
    assert len(set(counts)) > 1


@pytest.mark.parametrize("task", TASKS)
async def test_main_document_is_structured_markdown(model: OfflineModel, task: str) -> None:
    plan = await model.create_plan(task)
    step = main_step(plan)
    document = await document_of(model, task, step)
    assert document.startswith(f"# {argument_dict(step)['title']}\n")
    assert len(headings(document, 1)) == 1
    assert len(headings(document, 2)) >= 6
    assert re.search(r"^- ", document, flags=re.MULTILINE)
    assert re.search(r"^\| --- \| --- \|", document, flags=re.MULTILINE)
    assert 580 <= len(document.split()) <= 1200
    assert document.endswith("\n")
    assert "\n\n\n" not in document


async def test_main_document_mentions_the_subject_and_terms(model: OfflineModel) -> None:
    plan = await model.create_plan(MARKET_BRIEF)
    document = await document_of(model, MARKET_BRIEF, main_step(plan))
    assert document.count("home solar batteries") >= 5
    assert "| **solar** | 1 |" in document
    assert f"> **Task:** {MARKET_BRIEF}" in document


async def test_comparison_table_has_a_column_per_option(model: OfflineModel) -> None:
    task = "Compare heat pumps and gas boilers for a small house"
    plan = await model.create_plan(task)
    document = await document_of(model, task, main_step(plan))
    assert "| Criterion | Weight | heat pumps | gas boilers |" in document
    assert "### heat pumps" in document


@pytest.mark.parametrize("task", TASKS)
async def test_outline_lists_the_main_sections(model: OfflineModel, task: str) -> None:
    plan = await model.create_plan(task)
    outline_step = next(
        (step for step in plan.steps if argument_dict(step).get("file_name") == "outline.md"),
        None,
    )
    if outline_step is None:  # a task that asks for code gets a program instead
        assert "Write the program" in [step.title for step in plan.steps]
        return
    outline = await document_of(model, task, outline_step)
    main = await document_of(model, task, main_step(plan))
    listed = re.findall(r"^\d+\. \*\*(.+?)\*\* - ", outline, flags=re.MULTILINE)
    assert listed == headings(main, 2)
    assert str(argument_dict(main_step(plan))["file_name"]) in outline


async def test_hostile_text_appears_only_as_quoted_text(model: OfflineModel) -> None:
    plan = await model.create_plan(HOSTILE)
    document = await document_of(model, HOSTILE, main_step(plan))
    first_line = HOSTILE.splitlines()[0]
    assert f"> **Task:** {first_line}" in document
    assert len(headings(document, 1)) == 1


async def test_companion_documents_are_structured(model: OfflineModel) -> None:
    for task in TASKS[:5]:
        plan = await model.create_plan(task)
        for step in steps_using(plan, "write_document")[2:]:
            document = await document_of(model, task, step)
            assert document.startswith(f"# {argument_dict(step)['title']}\n")
            assert len(headings(document, 2)) >= 3
            assert 100 <= len(document.split()) <= 600


async def test_unplanned_step_gets_a_main_document_with_its_title(model: OfflineModel) -> None:
    step = plan_pb2.PlanStep(title="Write it up", tool="write_document")
    step.arguments.update({"file_name": "elsewhere.md", "title": "Custom  Title\nhere"})
    document = await document_of(model, MARKET_BRIEF, step)
    assert document.startswith("# Custom Title here\n")
    assert len(document.split()) >= 580


async def test_pace_zero_is_fast(model: OfflineModel) -> None:
    plan = await model.create_plan(MARKET_BRIEF)
    started = time.perf_counter()
    for step in steps_using(plan, "write_document"):
        await document_of(model, MARKET_BRIEF, step)
    assert time.perf_counter() - started < 0.5


async def test_pace_sleeps_between_pieces() -> None:
    model = OfflineModel(pace=0.01)
    plan = await model.create_plan(MARKET_BRIEF)
    companion = steps_using(plan, "write_document")[-1]
    started = time.perf_counter()
    pieces = await pieces_of(model, MARKET_BRIEF, companion)
    elapsed = time.perf_counter() - started
    assert elapsed >= 0.01 * (len(pieces) - 1) * 0.9


FAILURE = 'Traceback (most recent call last):\n  File "<string>", line 1\nValueError: ```bad``` <b>'


@pytest.mark.parametrize(
    ("failed_index", "kept_titles"),
    [
        (
            0,
            [
                "Outline the market brief",
                "Draft the market brief",
                "Summarise the key takeaways",
                "Check the delivered files",
                "Review the market brief",
            ],
        ),
        (
            1,
            [
                "Draft the market brief",
                "Summarise the key takeaways",
                "Check the delivered files",
                "Review the market brief",
            ],
        ),
        # The main document is lost, so the step that reads it back goes too.
        (2, ["Summarise the key takeaways", "Check the delivered files"]),
        (5, []),
    ],
)
async def test_revise_plan_replaces_the_failed_step(
    model: OfflineModel, failed_index: int, kept_titles: list[str]
) -> None:
    plan = await model.create_plan(MARKET_BRIEF)
    revised = await model.revise_plan(MARKET_BRIEF, plan, failed_index, FAILURE)
    assert revised.model == "offline"
    assert "ValueError" in revised.summary
    note = revised.steps[0]
    assert note.tool == "write_document"
    assert argument_dict(note)["file_name"] == f"revision-step-{failed_index + 1}.md"
    assert FAILURE in note.instructions
    assert [step.title for step in revised.steps[1:]] == kept_titles
    originals = {step.SerializeToString(deterministic=True) for step in plan.steps}
    for step in revised.steps[1:]:
        assert step.SerializeToString(deterministic=True) in originals


async def test_revise_plan_drops_python_steps_and_reads_of_their_output(
    model: OfflineModel,
) -> None:
    task = "Write a Python script that computes compound interest on 1000"
    plan = await model.create_plan(task)
    revised = await model.revise_plan(task, plan, 0, FAILURE)
    assert [step.tool for step in revised.steps] == ["write_document", "write_document"]


async def test_revision_document_fences_the_failure(model: OfflineModel) -> None:
    plan = await model.create_plan(MARKET_BRIEF)
    revised = await model.revise_plan(MARKET_BRIEF, plan, 0, FAILURE)
    document = await document_of(model, MARKET_BRIEF, revised.steps[0])
    assert document.startswith("# What Changed After Step 1 Failed\n")
    assert f"````text\n{FAILURE}\n````" in document
    assert "## What Failed" in document


async def test_revise_plan_rejects_an_unknown_step(model: OfflineModel) -> None:
    plan = await model.create_plan(MARKET_BRIEF)
    with pytest.raises(ValueError, match="outside"):
        await model.revise_plan(MARKET_BRIEF, plan, len(plan.steps), FAILURE)


async def test_a_real_executor_delivers_the_program_and_shows_its_run(
    stub: task_service_pb2_grpc.TaskServiceStub,
) -> None:
    request = task_service_pb2.CreateTaskRequest(
        text="Write a Python script that computes prime numbers"
    )
    task = await stub.CreateTask(request, timeout=10)
    events = await watch_all(stub, task.task_id)
    final = await stub.GetTask(task_service_pb2.GetTaskRequest(task_id=task.task_id))

    assert final.state == task_pb2.Task.STATE_SUCCEEDED, final.error
    assert "primes.py" in [artifact.path for artifact in final.artifacts]
    logs = [event.log_line.text for event in events if event.HasField("log_line")]
    assert "$ python primes.py" in logs
    assert "25 prime numbers up to 100:" in logs
    assert "No figures: the task states no numbers, so there is nothing to compute." in logs
    read = task_service_pb2.ReadArtifactRequest(task_id=task.task_id, path="primes.py")
    source = b"".join([chunk.data async for chunk in stub.ReadArtifact(read)])
    assert source.startswith(b'"""List the prime numbers up to a limit')
    figures_request = task_service_pb2.ReadArtifactRequest(
        task_id=task.task_id, path="notes/figures.json"
    )
    figures = json.loads(b"".join([c.data async for c in stub.ReadArtifact(figures_request)]))
    assert figures["note"] == "the task states no numbers, so there is nothing to compute"
