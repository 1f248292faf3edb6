"""The `web_search` tool: a query to a search provider, its top results as (title, URL, snippet).

The provider is the operator's choice (`--web-search`): SearXNG's JSON API (self-hosted, no key),
Tavily or Brave (keys from TAVILY_API_KEY and BRAVE_API_KEY). Each is spoken in its own wire
format. The provider's address is configured by the operator, so it is not put through
fetch_url's address check (a SearXNG on the same host is the usual setup); the pages the results
name are, when the agent fetches them. Result text is data for the model, never markup.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import httpx2

from mitosis.tool_errors import ToolError

PROVIDERS = ("searxng", "tavily", "brave")

DEFAULT_URLS = {
    "tavily": "https://api.tavily.com",
    "brave": "https://api.search.brave.com",
}
"""Where the keyed providers answer; SearXNG has no default, it is self-hosted."""

KEY_VARIABLES = {"tavily": "TAVILY_API_KEY", "brave": "BRAVE_API_KEY"}

_SNIPPET_CHARS = 400
_USER_AGENT = "mitosis-web_search/1"


@dataclass(frozen=True)
class SearchResult:
    """One result: what the provider says the page is."""

    title: str
    url: str
    snippet: str


@dataclass(frozen=True)
class SearchSettings:
    """Which provider to ask, and how."""

    provider: str
    url: str
    api_key: str = ""
    max_results: int = 5
    timeout: float = 15.0

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ValueError(
                f"the web search provider must be one of {', '.join(PROVIDERS)}, not "
                f"{self.provider!r}"
            )
        if not self.url:
            raise ValueError(f"the {self.provider} web search needs a URL (--web-search-url)")
        if self.provider in KEY_VARIABLES and not self.api_key:
            raise ValueError(
                f"the {self.provider} web search needs a key in {KEY_VARIABLES[self.provider]}"
            )

    def describe(self) -> str:
        """Say in a few words where searches go (never the key)."""
        return f"web_search: {self.provider} at {self.url}"


def search_settings(
    provider: str, url: str, env: Mapping[str, str], *, max_results: int = 5
) -> SearchSettings | None:
    """Return the settings for `provider` (empty: no web search), with its key from `env`."""
    if not provider:
        return None
    return SearchSettings(
        provider=provider,
        url=(url or DEFAULT_URLS.get(provider, "")).rstrip("/"),
        api_key=env.get(KEY_VARIABLES.get(provider, ""), "").strip(),
        max_results=max_results,
    )


async def web_search(query: str, settings: SearchSettings) -> list[SearchResult]:
    """Return the provider's top results for `query`, or raise ToolError saying why not."""
    query = query.strip()
    if not query:
        raise ToolError("web_search needs a query")
    try:
        async with httpx2.AsyncClient(
            timeout=settings.timeout, headers={"User-Agent": _USER_AGENT}, trust_env=False
        ) as client:
            if settings.provider == "searxng":
                results = await _searxng(client, query, settings)
            elif settings.provider == "tavily":
                results = await _tavily(client, query, settings)
            else:
                results = await _brave(client, query, settings)
    except httpx2.TimeoutException:
        raise ToolError(
            f"web_search: {settings.provider} did not answer within {settings.timeout:g} s"
        ) from None
    except httpx2.HTTPError as error:
        raise ToolError(f"web_search could not reach {settings.provider}: {error}") from None
    return [result for result in results if _is_web(result.url)][: settings.max_results]


async def _searxng(
    client: httpx2.AsyncClient, query: str, settings: SearchSettings
) -> list[SearchResult]:
    # GET /search?q=…&format=json; the instance must list json under search.formats.
    response = await client.get(f"{settings.url}/search", params={"q": query, "format": "json"})
    data = _json(response, settings)
    return [
        _result(item.get("title"), item.get("url"), item.get("content"))
        for item in _items(data.get("results"))
    ]


async def _tavily(
    client: httpx2.AsyncClient, query: str, settings: SearchSettings
) -> list[SearchResult]:
    # POST /search with a bearer key and a JSON body; results carry title, url and content.
    response = await client.post(
        f"{settings.url}/search",
        json={"query": query, "max_results": settings.max_results, "search_depth": "basic"},
        headers={"Authorization": f"Bearer {settings.api_key}"},
    )
    data = _json(response, settings)
    return [
        _result(item.get("title"), item.get("url"), item.get("content"))
        for item in _items(data.get("results"))
    ]


async def _brave(
    client: httpx2.AsyncClient, query: str, settings: SearchSettings
) -> list[SearchResult]:
    # GET /res/v1/web/search?q=…&count=N with X-Subscription-Token; results under web.results.
    response = await client.get(
        f"{settings.url}/res/v1/web/search",
        params={"q": query, "count": str(settings.max_results)},
        headers={"X-Subscription-Token": settings.api_key, "Accept": "application/json"},
    )
    data = _json(response, settings)
    web = data.get("web")
    items = web.get("results") if isinstance(web, dict) else None
    return [
        _result(item.get("title"), item.get("url"), item.get("description"))
        for item in _items(items)
    ]


def _json(response: httpx2.Response, settings: SearchSettings) -> dict[str, object]:
    if response.status_code in (401, 403):
        raise ToolError(
            f"web_search: {settings.provider} refused the key ({response.status_code}); check "
            f"{KEY_VARIABLES.get(settings.provider, 'its configuration')}"
        )
    if response.status_code != 200:
        raise ToolError(
            f"web_search: {settings.provider} answered HTTP {response.status_code}"
            f" {response.reason_phrase}"
        )
    try:
        data = response.json()
    except ValueError:
        hint = " (does the SearXNG instance allow format=json?)" * (settings.provider == "searxng")
        raise ToolError(f"web_search: {settings.provider} did not answer JSON{hint}") from None
    if not isinstance(data, dict):
        raise ToolError(f"web_search: {settings.provider} answered an unexpected shape")
    return data


def _items(value: object) -> list[dict[str, object]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _result(title: object, url: object, snippet: object) -> SearchResult:
    text = " ".join(str(snippet or "").split())
    return SearchResult(
        title=" ".join(str(title or "").split()) or str(url or ""),
        url=str(url or ""),
        snippet=text[:_SNIPPET_CHARS],
    )


def _is_web(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def format_results(query: str, results: list[SearchResult]) -> str:
    """Return the results as the model reads them: numbered, with title, URL and snippet."""
    if not results:
        return f"no results for {query!r}"
    blocks = [
        f"{number}. {result.title}\n   {result.url}\n   {result.snippet}"
        for number, result in enumerate(results, 1)
    ]
    return "\n".join(blocks)
