"""Planning with weak models and servers: answers that ignore the schema's descriptions are
normalised, a refused `response_format` falls back to JSON mode and then to a tool call, and
a model that never gives a valid plan is replaced by the offline planner's plan."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict

from mitosis.models.base import OFFLINE_FALLBACK_NOTE
from mitosis.models.openai_model import OpenAIModel, OpenAISettings
from mitosis.models.plan_schema import document_name, parse_plan_answer
from tests.fake_openai import Call, FakeOpenAI, HttpError, Text, ToolCalls, plan_reply

TASK = "Write a short market brief on home solar batteries"


@pytest.fixture
def fake() -> AsyncIterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def model(fake: FakeOpenAI) -> AsyncIterator[OpenAIModel]:
    settings = OpenAISettings(base_url=fake.base_url, api_key="sk-test", max_retries=0)
    async with OpenAIModel(settings) as made:
        yield made


def careless_plan() -> dict[str, Any]:
    """A plan as a small model writes it when it does not read the field descriptions."""
    return {
        "summary": "",
        "steps": [
            {"title": "", "tool": "Python", "rationale": "", "instructions": "Count the words"},
            {
                "title": "Write item 4",
                "tool": "write document",
                "rationale": "the brief",
                "instructions": "Write it.",
                "arguments": {"file_name": "X item 4"},
            },
            {
                "title": "Write it again",
                "tool": "write_document",
                "rationale": "",
                "instructions": "Another.",
                "arguments": {"file_name": "x-item-4.md", "title": ""},
            },
        ],
    }


def test_document_names_are_slugged_and_get_md() -> None:
    assert document_name("X item 4") == "x-item-4.md"
    assert document_name("Notes/Market Brief.txt") == "notes/market-brief.md"
    assert document_name("brief.md") == "brief.md"
    assert document_name("  ") == ""


async def test_a_plan_that_ignores_the_descriptions_is_normalised_without_a_repair(
    fake: FakeOpenAI, model: OpenAIModel
) -> None:
    fake.script(plan_reply(careless_plan()))
    plan = await model.create_plan(TASK)
    assert len(fake.exchanges) == 1  # no repair was needed
    assert [step.tool for step in plan.steps] == ["python", "write_document", "write_document"]
    arguments = [MessageToDict(step.arguments) for step in plan.steps]
    assert arguments[1] == {"file_name": "x-item-4.md", "title": "Write item 4"}
    assert arguments[2] == {"file_name": "x-item-4-2.md", "title": "Write it again"}
    assert plan.steps[0].title == "Count the words"
    assert plan.steps[0].rationale
    assert plan.summary.startswith("The plan: Count the words; Write item 4")


def test_an_escaping_document_name_is_still_refused() -> None:
    plan = careless_plan()
    plan["steps"][1]["arguments"]["file_name"] = "../../etc/x.md"
    with pytest.raises(ValueError, match="not a relative path"):
        parse_plan_answer(json.dumps(plan))


def good_plan() -> dict[str, Any]:
    plan = careless_plan()
    plan["summary"] = "A brief."
    return plan


async def test_a_refused_json_schema_falls_back_to_json_mode(
    fake: FakeOpenAI, model: OpenAIModel
) -> None:
    # OpenAI's own words and shape for a model without structured outputs.
    fake.script(
        HttpError(
            status=400,
            message="Invalid parameter: 'response_format' of type 'json_schema' is not "
            "supported with this model.",
            error_type="invalid_request_error",
            param="response_format",
            retry_after_ms=None,
        ),
        plan_reply(good_plan()),
        plan_reply(good_plan()),
    )
    plan = await model.create_plan(TASK)
    assert plan.summary == "A brief."
    bodies = fake.bodies
    assert bodies[0]["response_format"]["type"] == "json_schema"
    assert bodies[1]["response_format"] == {"type": "json_object"}
    assert "JSON schema" in bodies[1]["messages"][-1]["content"]
    # The refusal is remembered: the next plan starts in JSON mode.
    await model.create_plan(TASK)
    assert fake.bodies[2]["response_format"] == {"type": "json_object"}


async def test_a_server_refusing_both_formats_is_asked_with_a_tool_call(
    fake: FakeOpenAI, model: OpenAIModel
) -> None:
    # vLLM's error shape (top-level object), then Ollama's (OpenAI's shape, no param).
    fake.script(
        HttpError(
            status=400,
            message="guided decoding with json_schema is not supported by this backend",
            shape="vllm",
            retry_after_ms=None,
        ),
        HttpError(
            status=400,
            message="invalid response_format type: json_object",
            error_type="invalid_request_error",
            retry_after_ms=None,
        ),
        ToolCalls([Call("submit_plan", good_plan())]),
    )
    plan = await model.create_plan(TASK)
    assert plan.summary == "A brief."
    last = fake.bodies[2]
    assert "response_format" not in last
    assert last["tool_choice"] == {"type": "function", "function": {"name": "submit_plan"}}
    assert [tool["function"]["name"] for tool in last["tools"]] == ["submit_plan"]


async def test_a_model_that_never_plans_is_replaced_by_the_offline_plan(
    fake: FakeOpenAI, model: OpenAIModel
) -> None:
    broken = {"summary": "x", "steps": [{"tool": "shell", "title": "t"}]}
    fake.script(plan_reply(broken), Text("still not a plan"))
    plan = await model.create_plan(TASK)
    assert plan.summary.startswith(OFFLINE_FALLBACK_NOTE)
    assert "the answer is not valid JSON" in plan.summary
    assert len(plan.steps) >= 3
    assert len(fake.exchanges) == 2
