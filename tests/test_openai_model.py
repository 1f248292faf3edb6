"""The OpenAI-compatible model against a fake server, through the real `openai` client.

Nothing here is monkey-patched: `OpenAIModel` builds its own `AsyncOpenAI` pointed at a real
HTTP server on a loopback port (`tests/fake_openai.py`) that answers with scripted replies.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict

from mitosis.models.base import (
    TOOLS,
    FatalModelError,
    ModelUsage,
    PlanningModel,
    StepAgent,
    StepFailure,
    WritingModel,
)
from mitosis.models.offline import OfflineModel
from mitosis.models.openai_model import (
    OFFLINE_FALLBACK_NOTE,
    ModelCallFailed,
    ModelTimedOut,
    ModelUnusable,
    OpenAIModel,
    OpenAISettings,
    from_env,
    report_model_waits,
)
from mitosis.models.plan_schema import PLAN_SCHEMA, PlanSchemaError, parse_plan_answer
from mitosis.tool_errors import PathEscapeError, ToolError
from mitosis.tool_specs import FETCH_URL, ToolSpec
from mitosis.v1 import plan_pb2
from tests.fake_openai import (
    Call,
    Drop,
    FakeOpenAI,
    Hang,
    HttpError,
    Text,
    ToolCalls,
    error_401,
    error_429,
    plan_reply,
    plan_step,
)

TASK = "Write a short market brief on home solar batteries"

GOOD_PLAN: dict[str, Any] = {
    "summary": "Gather figures with a script, then write the brief from them.",
    "steps": [
        plan_step(
            "Compute the market figures",
            "python",
            code="import json\nprint(json.dumps({'size': 42}))",
        ),
        plan_step("Look at the workspace", "list_files"),
        plan_step(
            "Draft the market brief",
            "write_document",
            file_name="brief.md",
            doc_title="Home Solar Batteries: Market Brief",
        ),
    ],
}

MakeModel = Callable[..., OpenAIModel]


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def make_model(fake: FakeOpenAI) -> AsyncIterator[MakeModel]:
    made: list[OpenAIModel] = []

    def make(**overrides: Any) -> OpenAIModel:
        options: dict[str, Any] = {"max_retries": 2, "timeout_s": 5.0, **overrides}
        model = OpenAIModel(OpenAISettings(base_url=fake.base_url, api_key="sk-test", **options))
        made.append(model)
        return model

    yield make
    for model in made:
        await model.aclose()


class FakeTools:
    """StepTools that record every call; write_document consumes the stream piece by piece."""

    def __init__(self, *, files: dict[str, str] | None = None) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.logs: list[str] = []
        self.documents: dict[str, str] = {}
        self.pieces: dict[str, list[tuple[float, str]]] = {}
        self.files = dict(files or {})
        self.python_error: str | None = None
        self.python_output = "42"

    async def write_document(self, file_name: str, title: str, text: AsyncIterator[str]) -> str:
        self.calls.append(("write_document", file_name, title))
        if file_name.startswith("/"):
            raise PathEscapeError(file_name, "it is absolute")
        received = self.pieces.setdefault(file_name, [])
        async for piece in text:
            received.append((time.time(), piece))
        self.documents[file_name] = "".join(piece for _, piece in received)
        return f"wrote {file_name} as page 1 ({len(self.documents[file_name])} bytes)"

    async def python(self, code: str) -> str:
        self.calls.append(("python", code))
        if self.python_error is not None:
            raise ToolError(self.python_error)
        return self.python_output

    async def list_files(self) -> str:
        self.calls.append(("list_files",))
        return "\n".join(sorted(self.files)) or "(the workspace is empty)"

    async def read_file(self, path: str) -> str:
        self.calls.append(("read_file", path))
        if path.startswith("/") or ".." in path.split("/"):
            raise PathEscapeError(path, "it leaves the workspace")
        if path not in self.files:
            raise ToolError(f"read_file found no file {path!r} in the workspace")
        return self.files[path]

    async def log(self, text: str) -> None:
        self.logs.append(text)


class FetchingTools(FakeTools):
    def offered(self) -> list[ToolSpec]:
        return [FETCH_URL]

    async def call(self, name: str, arguments: Mapping[str, object]) -> str:
        url = str(arguments["url"])
        self.calls.append((name, url))
        return f"<html>page at {url}</html>"


def plan_of(*steps: dict[str, Any]) -> plan_pb2.Plan:
    return parse_plan_answer(json.dumps({"summary": "a plan", "steps": list(steps)})).to_proto(
        "test"
    )


WRITE_PLAN = plan_of(
    plan_step("Compute the figures", "python", code="print(6 * 7)"),
    plan_step("Draft the brief", "write_document", file_name="brief.md", doc_title="Brief"),
)
PYTHON_PLAN = plan_of(plan_step("Compute the figures", "python", code="print(6 * 7)"))


def tool_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [message for message in body["messages"] if message["role"] == "tool"]


# Protocols and settings --------------------------------------------------------------------


async def test_the_model_is_a_planner_a_writer_and_an_agent(make_model: MakeModel) -> None:
    model = make_model(plan_model="big-planner", step_model="small-doer")
    planner: PlanningModel = model
    writer: WritingModel = model
    agent: StepAgent = model
    assert planner.name == "openai:big-planner"
    assert writer.name == agent.name == "openai:big-planner"
    assert model.step_name == "openai:small-doer"


def test_settings_come_from_the_environment() -> None:
    assert from_env({}) is None
    assert from_env({"OPENAI_API_KEY": "  "}) is None
    settings = from_env({"OPENAI_API_KEY": "sk-x"})
    assert settings == OpenAISettings(base_url=None, api_key="sk-x")
    assert settings.plan_model == settings.step_model == "gpt-4o-mini"
    local = from_env(
        {
            "OPENAI_API_KEY": "ollama",
            "OPENAI_BASE_URL": "http://127.0.0.1:11434/v1",
            "MITOSIS_PLAN_MODEL": "llama3.1",
        }
    )
    assert local is not None
    assert local.base_url == "http://127.0.0.1:11434/v1"
    assert local.plan_model == local.step_model == "llama3.1"
    both = from_env({"OPENAI_API_KEY": "k", "MITOSIS_PLAN_MODEL": "a", "MITOSIS_STEP_MODEL": "b"})
    assert both is not None
    assert (both.plan_model, both.step_model) == ("a", "b")


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"api_key": ""}, "api_key"),
        ({"max_retries": -1}, "max_retries"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"max_iterations": 0}, "max_iterations"),
        ({"max_tokens_per_step": 0}, "max_tokens_per_step"),
        ({"step_model": " "}, "model names"),
    ],
)
def test_settings_refuse_nonsense(overrides: dict[str, Any], complaint: str) -> None:
    options: dict[str, Any] = {"base_url": None, "api_key": "k", **overrides}
    with pytest.raises(ValueError, match=complaint):
        OpenAISettings(**options)


# The plan schema ---------------------------------------------------------------------------


def test_the_schema_is_strict_mode_ready() -> None:
    schema: Any = PLAN_SCHEMA
    step = schema["properties"]["steps"]["items"]
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == set(schema["properties"])
    assert (
        schema["properties"]["steps"]["minItems"],
        schema["properties"]["steps"]["maxItems"],
    ) == (1, 8)
    assert set(step["required"]) == set(step["properties"])
    assert step["properties"]["tool"]["enum"] == list(TOOLS)
    arguments = step["properties"]["arguments"]
    assert set(arguments["required"]) == {"file_name", "title", "code", "path"}
    assert arguments["additionalProperties"] is False


def answer_with(**changes: Any) -> str:
    plan = json.loads(json.dumps(GOOD_PLAN))
    for path, value in changes.items():
        target = plan
        keys = path.split("__")
        for key in keys[:-1]:
            target = target[int(key)] if isinstance(target, list) else target[key]
        last = keys[-1]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return json.dumps(plan)


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ("", "the answer was empty"),
        ("Sure! Here is the plan: {", "the answer is not valid JSON"),
        ("[1, 2]", "the answer is an array, not an object with summary and steps"),
        (answer_with(summary=7), "summary is a number, not a string"),
        (answer_with(steps=[]), "steps has 0 items; a plan has 1 to 8 steps"),
        (
            answer_with(steps=[GOOD_PLAN["steps"][1]] * 9),
            "steps has 9 items; a plan has 1 to 8 steps",
        ),
        (
            answer_with(steps__1__tool="shell"),
            "steps[1].tool is 'shell', not one of write_document, python, list_files, read_file",
        ),
        (answer_with(steps__0__title=5), "steps[0].title is a number, not a string"),
        (answer_with(steps__2__arguments__file_name=""), "steps[2] uses write_document but"),
        (answer_with(steps__2__arguments__file_name="/brief.md"), "not a relative path"),
        (answer_with(steps__2__arguments__file_name="../brief.md"), "not a relative path"),
        (answer_with(steps__0__arguments__code=3), "steps[0].arguments.code is a number"),
        (answer_with(steps__1="list"), "steps[1] is a string, not an object"),
    ],
)
def test_a_broken_plan_is_named_precisely(answer: str, problem: str) -> None:
    with pytest.raises(PlanSchemaError) as raised:
        parse_plan_answer(answer)
    assert problem in str(raised.value)


def test_several_problems_are_listed_together() -> None:
    answer = answer_with(steps__0__tool="bash", steps__1__instructions=[], summary=3)
    with pytest.raises(PlanSchemaError) as raised:
        parse_plan_answer(answer)
    message = str(raised.value)
    assert "summary is a number" in message
    assert "steps[0].tool is 'bash'" in message
    assert "steps[1].instructions is an array" in message


def test_a_fenced_or_loose_answer_is_still_a_plan() -> None:
    plan = json.loads(json.dumps(GOOD_PLAN))
    plan["steps"][1]["arguments"] = None
    plan["steps"][0]["extra"] = "ignored"
    answer = parse_plan_answer("```json\n" + json.dumps(plan) + "\n```")
    assert [step.tool for step in answer.steps] == ["python", "list_files", "write_document"]
    proto = answer.to_proto("m")
    assert MessageToDict(proto.steps[1].arguments) == {}


# Planning ----------------------------------------------------------------------------------


async def test_a_plan_comes_from_structured_output(fake: FakeOpenAI, make_model: MakeModel) -> None:
    fake.script(plan_reply(GOOD_PLAN, prompt_tokens=300, completion_tokens=150))
    usage = ModelUsage()
    plan = await make_model(plan_model="planner-x").create_plan(TASK, usage=usage)

    assert plan.model == "openai:planner-x"
    assert plan.summary == GOOD_PLAN["summary"]
    assert [(step.title, step.tool) for step in plan.steps] == [
        ("Compute the market figures", "python"),
        ("Look at the workspace", "list_files"),
        ("Draft the market brief", "write_document"),
    ]
    assert MessageToDict(plan.steps[0].arguments) == {
        "code": "import json\nprint(json.dumps({'size': 42}))"
    }
    assert MessageToDict(plan.steps[1].arguments) == {}
    assert MessageToDict(plan.steps[2].arguments) == {
        "file_name": "brief.md",
        "title": "Home Solar Batteries: Market Brief",
    }
    assert (usage.model_calls, usage.input_tokens, usage.output_tokens) == (1, 300, 150)

    (exchange,) = fake.exchanges
    body = exchange.body
    assert body["model"] == "planner-x"
    assert not body.get("stream")
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "plan", "strict": True, "schema": PLAN_SCHEMA},
    }
    assert body["messages"][0]["role"] == "system"
    assert TASK in body["messages"][1]["content"]
    assert TASK not in body["messages"][0]["content"]
    assert exchange.headers["authorization"] == "Bearer sk-test"


async def test_a_malformed_plan_gets_one_repair_attempt(
    fake: FakeOpenAI, make_model: MakeModel
) -> None:
    fake.script(Text("Sure! Here is your plan: {steps: ["), plan_reply(GOOD_PLAN))
    plan = await make_model().create_plan(TASK)
    assert len(plan.steps) == 3

    first, second = fake.bodies
    repair = second["messages"]
    assert repair[: len(first["messages"])] == first["messages"]
    assert repair[-2] == {"role": "assistant", "content": "Sure! Here is your plan: {steps: ["}
    assert repair[-1]["role"] == "user"
    assert "not a valid plan: the answer is not valid JSON" in repair[-1]["content"]
    assert second["response_format"] == first["response_format"]


async def test_a_schema_breaking_tool_is_shown_to_the_model(
    fake: FakeOpenAI, make_model: MakeModel
) -> None:
    broken = json.loads(answer_with(steps__1__tool="shell"))
    fake.script(plan_reply(broken), plan_reply(GOOD_PLAN))
    plan = await make_model().create_plan(TASK)
    assert plan.steps[1].tool == "list_files"
    repair = fake.bodies[1]["messages"][-1]["content"]
    assert (
        "steps[1].tool is 'shell', not one of write_document, python, list_files, read_file"
        in repair
    )


async def test_two_bad_plans_fall_back_to_the_offline_plan(
    fake: FakeOpenAI, make_model: MakeModel, caplog: pytest.LogCaptureFixture
) -> None:
    fake.script(Text("no plan today"), Text("I really cannot make a plan, sorry. " * 30))
    with caplog.at_level(logging.WARNING, "mitosis.models.openai_model"):
        plan = await make_model().create_plan(TASK)
    # Nothing valid came, so the offline planner's plan stands in, and the summary says so.
    assert plan.summary.startswith(OFFLINE_FALLBACK_NOTE)
    assert "did not give a valid plan, even after a repair attempt" in plan.summary
    assert "the answer is not valid JSON" in plan.summary
    offline = await OfflineModel(pace=0).create_plan(TASK)
    assert [step.title for step in plan.steps] == [step.title for step in offline.steps]
    assert plan.model == "openai:gpt-4o-mini"
    assert "it returned: I really cannot make a plan, sorry." in caplog.text
    assert "using the offline planner's plan instead" in caplog.text
    assert len(fake.exchanges) == 2


async def test_revise_plan_replaces_the_failed_step_and_the_rest(
    fake: FakeOpenAI, make_model: MakeModel
) -> None:
    original = parse_plan_answer(json.dumps(GOOD_PLAN)).to_proto("openai:gpt-4o-mini")
    replacement = {
        "summary": "Write the brief without the failed figures.",
        "steps": [
            plan_step(
                "Record what failed", "write_document", file_name="failure.md", doc_title="F"
            ),
            plan_step("Draft the brief", "write_document", file_name="brief.md", doc_title="B"),
        ],
    }
    fake.script(plan_reply(replacement))
    failure = "python exited with status 1: ZeroDivisionError: division by zero"
    revised = await make_model().revise_plan(TASK, original, 1, failure)

    assert revised.model == "openai:gpt-4o-mini"
    assert [step.title for step in revised.steps] == ["Record what failed", "Draft the brief"]
    (body,) = fake.bodies
    assert body["response_format"]["json_schema"]["schema"] == PLAN_SCHEMA
    request = body["messages"][1]["content"]
    assert failure in request
    assert "steps[1] ('Look at the workspace', tool list_files) failed" in request
    assert "Compute the market figures" in request
    assert "replace steps[1]" in request


async def test_revise_plan_refuses_a_step_outside_the_plan(make_model: MakeModel) -> None:
    with pytest.raises(ValueError, match="outside the plan"):
        await make_model().revise_plan(TASK, WRITE_PLAN, 5, "boom")


# Executing a step --------------------------------------------------------------------------


async def test_a_step_runs_as_a_tool_loop_and_streams_its_document(
    fake: FakeOpenAI, make_model: MakeModel
) -> None:
    pieces = ["# Brief\n\n", "Home ", "solar ", "batteries ", "are ", "growing: ", "42", ".\n"]
    fake.script(
        ToolCalls(
            [Call("python", {"code": "print(6 * 7)"})],
            content="First I compute the figures.\nThen I write.",
            prompt_tokens=200,
            completion_tokens=30,
        ),
        ToolCalls(
            [
                Call(
                    "write_document",
                    {"file_name": "brief.md", "title": "Brief", "instructions": "Use 42."},
                )
            ],
            prompt_tokens=260,
            completion_tokens=40,
        ),
        Text(pieces=pieces, piece_delay=0.02, prompt_tokens=500, completion_tokens=8),
        Text("I wrote brief.md from the computed figure.", prompt_tokens=300, completion_tokens=10),
    )
    tools = FakeTools()
    usage = ModelUsage()
    await make_model(step_model="doer").run_step(TASK, WRITE_PLAN, 1, tools, usage)

    assert tools.calls == [("python", "print(6 * 7)"), ("write_document", "brief.md", "Brief")]
    assert tools.documents == {"brief.md": "".join(pieces)}
    received = tools.pieces["brief.md"]
    assert [piece for _, piece in received] == pieces
    assert (usage.model_calls, usage.input_tokens, usage.output_tokens) == (4, 1260, 88)
    assert usage.latency_ms >= 0
    assert tools.logs == [
        "model: First I compute the figures.",
        "model: Then I write.",
        "tool call: python(print(6 * 7))",
        "tool call: write_document('brief.md', 'Brief')",
        "model: I wrote brief.md from the computed figure.",
    ]

    loop_1, loop_2, document, loop_3 = fake.exchanges
    for exchange in (loop_1, loop_2, loop_3):
        assert exchange.body["model"] == "doer"
        assert exchange.stream
        assert exchange.body["stream_options"] == {"include_usage": True}
        assert exchange.tool_names == ["write_document", "python", "list_files", "read_file"]
    assert TASK in loop_1.messages[1]["content"]
    assert "step 2 of 2, 'Draft the brief'" in loop_1.messages[1]["content"]
    (result,) = tool_messages(loop_2.body)
    assert result["content"] == "42"
    assert result["tool_call_id"] == loop_2.messages[2]["tool_calls"][0]["id"]
    assert loop_2.messages[2]["tool_calls"][0]["function"] == {
        "name": "python",
        "arguments": json.dumps({"code": "print(6 * 7)"}),
    }
    assert "tools" not in document.body
    assert document.stream
    assert "Use 42." in document.text()
    assert "returned:\n42" in document.text()
    assert tool_messages(loop_3.body)[-1]["content"].startswith("wrote brief.md")

    # Token by token: the first piece reached the tools before the server sent the last one.
    sent = document.sent
    assert [chunk.text for chunk in sent] == pieces
    assert received[0][0] < sent[-1].at
    assert all(got >= chunk.at for (got, _), chunk in zip(received, sent, strict=True))


async def test_tool_errors_go_back_to_the_model(fake: FakeOpenAI, make_model: MakeModel) -> None:
    fake.script(
        ToolCalls(
            [
                Call("python", {"code": "print(x)"}),
                Call("read_file", {"path": "../secret"}),
                Call("read_file", {"path": "missing.txt"}),
                Call("shell", {"command": "ls"}),
                Call("python", "{not json"),
                Call(
                    "write_document", {"file_name": "/etc/x.md", "title": "X", "instructions": "x"}
                ),
            ]
        ),
        Text("The script failed; I will report it."),
    )
    tools = FakeTools()
    tools.python_error = "python exited with status 1: NameError: name 'x' is not defined"
    await make_model().run_step(TASK, PYTHON_PLAN, 0, tools, ModelUsage())

    results = [message["content"] for message in tool_messages(fake.bodies[1])]
    assert results[0] == f"error: {tools.python_error}"
    assert results[1].startswith("error: '../secret' is not a workspace path")
    assert results[2] == "error: read_file found no file 'missing.txt' in the workspace"
    assert results[3].startswith("error: there is no tool named 'shell'; the tools are ")
    assert results[4].startswith("error: the arguments of python are not valid JSON")
    assert results[5].startswith("error: '/etc/x.md' is not a workspace path")
    assert f"tool error: {tools.python_error}" in tools.logs
    assert len(fake.exchanges) == 2


async def test_fetch_url_is_offered_only_when_the_tools_offer_it(
    fake: FakeOpenAI, make_model: MakeModel
) -> None:
    fake.script(
        ToolCalls([Call("fetch_url", {"url": "https://example.com"})]),
        Text("Fetched."),
        ToolCalls([Call("fetch_url", {"url": "https://example.com"})]),
        Text("No such tool."),
    )
    model = make_model()
    await model.run_step(TASK, PYTHON_PLAN, 0, FetchingTools(), ModelUsage())
    await model.run_step(TASK, PYTHON_PLAN, 0, FakeTools(), ModelUsage())

    exchanges = fake.exchanges
    assert exchanges[0].tool_names[-1] == "fetch_url"
    assert (
        tool_messages(exchanges[1].body)[0]["content"] == "<html>page at https://example.com</html>"
    )
    assert "fetch_url" not in exchanges[2].tool_names
    assert tool_messages(exchanges[3].body)[0]["content"].startswith(
        "error: there is no tool named 'fetch_url'"
    )


async def test_a_step_stops_at_its_cap_on_model_calls(
    fake: FakeOpenAI, make_model: MakeModel
) -> None:
    fake.script(*[ToolCalls([Call("list_files")]) for _ in range(3)])
    tools = FakeTools()
    with pytest.raises(StepFailure, match="did not finish within 2 model calls"):
        await make_model(max_iterations=2).run_step(TASK, PYTHON_PLAN, 0, tools, ModelUsage())
    assert len(fake.exchanges) == 2
    assert tools.calls == [("list_files",)]
    assert fake.pending == 1


async def test_a_step_stops_at_its_cap_on_tokens(fake: FakeOpenAI, make_model: MakeModel) -> None:
    fake.script(*[ToolCalls([Call("list_files")]) for _ in range(4)])
    usage = ModelUsage()
    with pytest.raises(StepFailure) as raised:
        await make_model(max_tokens_per_step=300).run_step(TASK, PYTHON_PLAN, 0, FakeTools(), usage)
    assert str(raised.value) == ("step 1 used 360 tokens, more than its cap of 300 tokens per step")
    assert usage.model_calls == 3
    assert len(fake.exchanges) == 3


async def test_a_document_step_that_writes_nothing_is_reminded_then_fails(
    fake: FakeOpenAI, make_model: MakeModel
) -> None:
    fake.script(Text("The brief is done."), Text("Really, it is done."))
    with pytest.raises(StepFailure, match="without writing its document, even when reminded"):
        await make_model().run_step(TASK, WRITE_PLAN, 1, FakeTools(), ModelUsage())
    reminder = fake.bodies[1]["messages"][-1]
    assert reminder["role"] == "user"
    assert "write_document" in reminder["content"]


async def test_write_document_serves_a_planned_step(
    fake: FakeOpenAI, make_model: MakeModel
) -> None:
    fake.script(Text(pieces=["# Brief\n", "Text."], prompt_tokens=50, completion_tokens=4))
    usage = ModelUsage()
    step = WRITE_PLAN.steps[1]
    pieces = [piece async for piece in make_model().write_document(TASK, step, usage=usage)]
    assert pieces == ["# Brief\n", "Text."]
    assert (usage.model_calls, usage.input_tokens, usage.output_tokens) == (1, 50, 4)
    assert "'Brief'" in fake.exchanges[0].text()


# Faults --------------------------------------------------------------------------------------


async def test_a_429_is_retried_and_watchers_hear_of_the_wait(
    fake: FakeOpenAI, make_model: MakeModel
) -> None:
    fake.script(error_429(), Text("Done without tools."))
    tools = FakeTools()
    await make_model().run_step(TASK, PYTHON_PLAN, 0, tools, ModelUsage())
    first, second = fake.exchanges
    assert first.status == 429
    assert second.headers["x-stainless-retry-count"] == "1"
    assert tools.logs[0] == (
        "the model endpoint answered 429 Too Many Requests; "
        "the client retries with backoff (attempt 2 of 3 next)"
    )
    assert tools.logs[1:] == ["model: Done without tools."]


async def test_a_500_is_retried_for_the_planner_too(
    fake: FakeOpenAI, make_model: MakeModel
) -> None:
    fake.script(HttpError(status=500), HttpError(status=503), plan_reply(GOOD_PLAN))
    heard: list[str] = []

    async def hear(text: str) -> None:
        heard.append(text)

    with report_model_waits(hear):
        plan = await make_model().create_plan(TASK)
    assert len(plan.steps) == 3
    assert [exchange.status for exchange in fake.exchanges] == [500, 503, 200]
    assert heard == [
        "the model endpoint answered 500 Internal Server Error; "
        "the client retries with backoff (attempt 2 of 3 next)",
        "the model endpoint answered 503 Service Unavailable; "
        "the client retries with backoff (attempt 3 of 3 next)",
    ]


async def test_5xx_after_every_retry_fails_the_step(
    fake: FakeOpenAI, make_model: MakeModel
) -> None:
    fake.script(*[HttpError(status=502, message="upstream is down") for _ in range(3)])
    tools = FakeTools()
    with pytest.raises(ModelCallFailed) as raised:
        await make_model().run_step(TASK, PYTHON_PLAN, 0, tools, ModelUsage())
    assert str(raised.value) == (
        "the model endpoint answered 502 after 3 attempts: upstream is down"
    )
    assert not isinstance(raised.value, FatalModelError)
    assert tools.logs[-1] == (
        "the model endpoint answered 502 Bad Gateway; no retries left after 3 attempts"
    )


async def test_a_bad_key_fails_at_once(fake: FakeOpenAI, make_model: MakeModel) -> None:
    fake.script(error_401(), plan_reply(GOOD_PLAN))
    with pytest.raises(FatalModelError) as raised:
        await make_model().create_plan(TASK)
    assert isinstance(raised.value, ModelUnusable)
    message = str(raised.value)
    assert message.startswith("the model endpoint refused the API key (401): Incorrect API key")
    assert message.endswith("; check OPENAI_API_KEY")
    assert len(fake.exchanges) == 1


async def test_an_unknown_model_fails_at_once(fake: FakeOpenAI, make_model: MakeModel) -> None:
    fake.script(
        HttpError(
            status=404,
            message="The model `gpt-9` does not exist or you do not have access to it.",
            code="model_not_found",
            retry_after_ms=None,
        )
    )
    with pytest.raises(ModelUnusable) as raised:
        await make_model(step_model="gpt-9").run_step(
            TASK, PYTHON_PLAN, 0, FakeTools(), ModelUsage()
        )
    message = str(raised.value)
    assert "does not know the model 'gpt-9' (404)" in message
    assert "The model `gpt-9` does not exist" in message
    assert len(fake.exchanges) == 1


async def test_a_call_past_its_deadline_fails_the_step(
    fake: FakeOpenAI, make_model: MakeModel
) -> None:
    fake.script(Hang(seconds=10))
    started = time.monotonic()
    with pytest.raises(ModelTimedOut) as raised:
        await make_model(timeout_s=0.3, max_retries=0).run_step(
            TASK, PYTHON_PLAN, 0, FakeTools(), ModelUsage()
        )
    assert time.monotonic() - started < 3
    assert str(raised.value) == "the model did not answer within 0.3 s (1 attempt)"
    assert isinstance(raised.value, StepFailure)
    await fake.wait_for(lambda: fake.exchanges[0].disconnected)


async def test_a_timeout_is_retried_with_a_log_line(
    fake: FakeOpenAI, make_model: MakeModel
) -> None:
    fake.script(Hang(seconds=10), Text("Done."))
    tools = FakeTools()
    await make_model(timeout_s=0.3, max_retries=1).run_step(
        TASK, PYTHON_PLAN, 0, tools, ModelUsage()
    )
    assert tools.logs == [
        "the model sent no answer (a timeout or a broken connection); retrying, attempt 2 of 2",
        "model: Done.",
    ]


async def test_a_connection_dropped_before_the_answer_is_retried(
    fake: FakeOpenAI, make_model: MakeModel
) -> None:
    fake.script(Drop(), plan_reply(GOOD_PLAN))
    plan = await make_model().create_plan(TASK)
    assert len(plan.steps) == 3
    assert len(fake.exchanges) == 2


async def test_a_stream_dropped_midway_fails_the_step_cleanly(
    fake: FakeOpenAI, make_model: MakeModel
) -> None:
    pieces = ["# Brief\n", "one ", "two ", "three ", "four "]
    fake.script(
        ToolCalls(
            [Call("write_document", {"file_name": "brief.md", "title": "B", "instructions": "x"})]
        ),
        Text(pieces=pieces, drop_after=3),
    )
    tools = FakeTools()
    with pytest.raises(ModelCallFailed) as raised:
        await make_model().run_step(TASK, WRITE_PLAN, 1, tools, ModelUsage())
    assert str(raised.value).startswith(
        f"the connection to the model endpoint at {fake.base_url}/ failed: "
    )
    assert [piece for _, piece in tools.pieces["brief.md"]] == pieces[:3]
    assert "brief.md" not in tools.documents
    assert len(fake.exchanges) == 2


async def test_cancelling_a_step_closes_its_model_stream(
    fake: FakeOpenAI, make_model: MakeModel
) -> None:
    fake.script(
        ToolCalls(
            [Call("write_document", {"file_name": "brief.md", "title": "B", "instructions": "x"})]
        ),
        Text(pieces=[f"word{n} " for n in range(200)], piece_delay=0.05),
    )
    tools = FakeTools()
    run = asyncio.create_task(make_model().run_step(TASK, WRITE_PLAN, 1, tools, ModelUsage()))
    await fake.wait_for(lambda: len(fake.exchanges) == 2 and len(fake.exchanges[1].sent) >= 3)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    document = fake.exchanges[1]
    await fake.wait_for(lambda: document.disconnected, within=2)
    assert not document.finished
    assert len(document.sent) < 20


async def test_a_refused_request_is_not_retried(fake: FakeOpenAI, make_model: MakeModel) -> None:
    fake.script(
        HttpError(
            status=400,
            message="This model's maximum context length is 8192 tokens",
            retry_after_ms=None,
        )
    )
    with pytest.raises(ModelCallFailed) as raised:
        await make_model().create_plan(TASK)
    assert str(raised.value) == (
        "the model endpoint answered 400: This model's maximum context length is 8192 tokens"
    )
    assert len(fake.exchanges) == 1


class StoppingTools(FakeTools):
    """Tools whose page refuses more than two pieces of a document."""

    async def write_document(self, file_name: str, title: str, text: AsyncIterator[str]) -> str:
        self.calls.append(("write_document", file_name, title))
        count = 0
        async for _ in text:
            count += 1
            if count == 2:
                raise ToolError("the page refused the document: it is too large")
        return "unreachable"


async def test_a_document_the_tools_stop_reading_is_closed_at_once(
    fake: FakeOpenAI, make_model: MakeModel
) -> None:
    fake.script(
        ToolCalls(
            [Call("write_document", {"file_name": "brief.md", "title": "B", "instructions": "x"})]
        ),
        Text(pieces=[f"word{n} " for n in range(100)], piece_delay=0.05),
        Text("The page refused the document."),
    )
    tools = StoppingTools()
    await make_model().run_step(TASK, PYTHON_PLAN, 0, tools, ModelUsage())
    document = fake.exchanges[1]
    await fake.wait_for(lambda: document.disconnected, within=2)
    assert not document.finished
    assert len(document.sent) < 10
    assert tool_messages(fake.bodies[2])[0]["content"] == (
        "error: the page refused the document: it is too large"
    )


async def test_a_long_retry_after_is_reported(fake: FakeOpenAI, make_model: MakeModel) -> None:
    fake.script(error_429(retry_after_ms=1200), Text("Done."))
    tools = FakeTools()
    started = time.monotonic()
    await make_model().run_step(TASK, PYTHON_PLAN, 0, tools, ModelUsage())
    assert time.monotonic() - started >= 1.1
    assert tools.logs[0] == (
        "the model endpoint answered 429 Too Many Requests; the client retries with backoff "
        "(attempt 2 of 3 next, the endpoint asks for 1.2 s)"
    )
