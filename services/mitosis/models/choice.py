"""Which model a service runs, from its flags and environment: the one place both read it."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from mitosis.models.openai_wire import DEFAULT_MODEL, OpenAISettings
from mitosis.rpc.settings import EnvironmentOnly, add_setting

OFFLINE = "offline"
OPENAI = "openai"


OPENAI_API_KEY = EnvironmentOnly(
    "OPENAI_API_KEY",
    "the OpenAI-compatible endpoint's key (any text for Ollama); with it the"
    " model is openai unless MITOSIS_MODEL says otherwise",
)


def add_model_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """Add --model and the OpenAI-compatible endpoint's settings to a service's flags."""
    group = parser.add_argument_group("model")
    add_setting(
        group,
        "--model",
        "MITOSIS_MODEL",
        env,
        choices=[OFFLINE, OPENAI],
        default=OPENAI if env.get("OPENAI_API_KEY") else OFFLINE,
        default_text="openai when OPENAI_API_KEY is set, else offline",
        help="offline: deterministic, no network, no key; openai: any OpenAI-compatible endpoint",
    )
    add_setting(
        group,
        "--plan-model",
        "MITOSIS_PLAN_MODEL",
        env,
        default=DEFAULT_MODEL,
        help="model name for planning",
    )
    add_setting(
        group,
        "--step-model",
        "MITOSIS_STEP_MODEL",
        env,
        default=env.get("MITOSIS_PLAN_MODEL") or DEFAULT_MODEL,
        default_text="the plan model",
        help="model name for running steps and writing documents",
    )
    add_setting(
        group,
        "--openai-base-url",
        "OPENAI_BASE_URL",
        env,
        default_text="OpenAI's own API",
        help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:11434/v1 for Ollama; the key"
        " comes from OPENAI_API_KEY only",
    )
    add_setting(
        group,
        "--model-timeout",
        "MITOSIS_MODEL_TIMEOUT",
        env,
        type=float,
        default="60",
        help="seconds one model call may wait for an answer",
    )
    add_setting(
        group,
        "--model-retries",
        "MITOSIS_MODEL_RETRIES",
        env,
        type=int,
        default="3",
        help="retries of a model call that got a 429, a 5xx or no answer, with backoff",
    )


def openai_settings(args: argparse.Namespace, env: Mapping[str, str]) -> OpenAISettings:
    """Return the endpoint's settings; raise SystemExit with advice when the key is missing."""
    key = env.get("OPENAI_API_KEY", "").strip()
    if not key:
        raise SystemExit(
            "--model openai needs OPENAI_API_KEY (any text for Ollama or llama.cpp's server)"
        )
    return OpenAISettings(
        base_url=args.openai_base_url,
        api_key=key,
        plan_model=args.plan_model,
        step_model=args.step_model,
        timeout_s=args.model_timeout,
        max_retries=args.model_retries,
    )
