"""Which model a service runs, from its flags and environment: the one place both read it."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from mitosis.models.openai_wire import DEFAULT_MODEL, OpenAISettings

OFFLINE = "offline"
OPENAI = "openai"


def add_model_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """Add --model and the OpenAI-compatible endpoint's settings to a service's flags."""
    default = env.get("MITOSIS_MODEL") or (OPENAI if env.get("OPENAI_API_KEY") else OFFLINE)
    plan_model = env.get("MITOSIS_PLAN_MODEL") or DEFAULT_MODEL
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        choices=[OFFLINE, OPENAI],
        default=default,
        help="offline: deterministic, no network, no key; openai: any OpenAI-compatible"
        " endpoint (env MITOSIS_MODEL; default: openai when OPENAI_API_KEY is set, else"
        " offline; now %(default)s)",
    )
    group.add_argument(
        "--plan-model",
        default=plan_model,
        help="model name for planning (env MITOSIS_PLAN_MODEL; default %(default)s)",
    )
    group.add_argument(
        "--step-model",
        default=env.get("MITOSIS_STEP_MODEL") or plan_model,
        help="model name for running steps and writing documents (env MITOSIS_STEP_MODEL;"
        " default: the plan model)",
    )
    group.add_argument(
        "--openai-base-url",
        default=env.get("OPENAI_BASE_URL") or None,
        help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:11434/v1 for Ollama (env"
        " OPENAI_BASE_URL; default: OpenAI's). The key comes from OPENAI_API_KEY only.",
    )
    group.add_argument(
        "--model-timeout",
        type=float,
        default=float(env.get("MITOSIS_MODEL_TIMEOUT", "60")),
        help="seconds one model call may wait for an answer (default %(default)s)",
    )
    group.add_argument(
        "--model-retries",
        type=int,
        default=int(env.get("MITOSIS_MODEL_RETRIES", "3")),
        help="retries of a model call that got a 429, a 5xx or no answer, with backoff"
        " (env MITOSIS_MODEL_RETRIES; default %(default)s)",
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
