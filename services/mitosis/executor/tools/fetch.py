"""The `fetch_url` tool: a web page's text, fetched only from public addresses.

A host name is resolved once, every address it resolves to is checked, and the connection
goes to the checked address (the check lives in the HTTP client's network backend, so no
second lookup can rebind the name in between). Every redirect is a new request through the
same check, up to a bounded number. The response is streamed and cut off at a size limit,
the whole fetch has a time limit, and only text (HTML, plain text, JSON, XML) is returned.

`fetch_page` is what the tool returns: an HTML page's title and readable text (the main content
without menus, scripts and markup, by trafilatura), other text as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import httpcore2
import httpx2
import trafilatura

from mitosis.tool_errors import ToolError, ToolLimitExceeded

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

AddressPolicy = Callable[[IPAddress, int], str | None]
"""Says why a connection to (address, port) is refused, or None to allow it."""

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
"""Cloud instance-metadata endpoints (AWS, ECS, AWS over IPv6, Alibaba)."""

TEXT_TYPES = ("text/", "application/json", "application/xml", "application/xhtml+xml")
"""Content types fetch_url returns (and any application/...+json or +xml)."""

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_USER_AGENT = "mitosis-fetch_url/1"


def public_only(address: IPAddress, port: int) -> str | None:
    """Refuse every address that is not globally routable unicast: loopback, private,
    link-local, CGNAT, multicast, unspecified, reserved, documentation and metadata
    addresses, and IPv6 forms that embed one of them."""
    for candidate in _with_embedded(address):
        if candidate in METADATA_ADDRESSES:
            return "a cloud metadata address"
        if candidate.is_loopback:
            return "a loopback address"
        if candidate.is_unspecified:
            return "an unspecified address"
        if candidate.is_link_local:
            return "a link-local address"
        if candidate.is_multicast:
            return "a multicast address"
        if candidate.is_private:
            return "a private address"
        if isinstance(candidate, ipaddress.IPv6Address) and candidate.is_site_local:
            return "a site-local address"
        if candidate in _SHARED:
            return "a shared (carrier-grade NAT) address"
        if not candidate.is_global or candidate.is_reserved:
            return "not a public address"
    return None


@dataclass(frozen=True)
class FetchSettings:
    """The limits of one fetch."""

    max_bytes: int = 2 << 20
    """Bytes of body a fetch reads at most; a larger page is refused."""
    timeout: float = 20.0
    """Seconds a whole fetch (redirects included) may take."""
    max_redirects: int = 5
    policy: AddressPolicy = field(default=public_only)
    """Which addresses may be connected to (tests allow one local server)."""


async def fetch_url(url: str, settings: FetchSettings | None = None) -> tuple[str, str]:
    """Return the text of the page at `url` and its content type, or raise ToolError."""
    settings = settings or FetchSettings()
    try:
        async with asyncio.timeout(settings.timeout), _client(settings) as client:
            return await _follow(client, url, settings)
    except TimeoutError:
        raise ToolError(
            f"fetch_url gave up on {url} after {settings.timeout:g} s (its time limit)"
        ) from None


async def _follow(client: httpx2.AsyncClient, url: str, settings: FetchSettings) -> tuple[str, str]:
    """Fetch `url`, following redirects (each through the address check) up to the limit."""
    current = _parse(url)
    for _ in range(settings.max_redirects + 1):
        try:
            async with client.stream("GET", current) as response:
                if response.is_redirect and "location" in response.headers:
                    current = _parse(str(current.join(response.headers["location"])))
                    continue
                return await _text(response, settings)
        except _Refused as refused:
            raise ToolError(f"fetch_url refused {current}: {refused}") from None
        except (httpx2.HTTPError, *_TRANSPORT_ERRORS) as error:
            raise ToolError(f"fetch_url could not fetch {current}: {_describe(error)}") from None
    raise ToolError(
        f"fetch_url stopped after {settings.max_redirects} redirects from {url}"
        " (the limit of redirects it follows)"
    )


@dataclass(frozen=True)
class Page:
    """A fetched page: where it ended up, its title and its readable text."""

    url: str
    title: str
    text: str
    media_type: str


async def fetch_page(url: str, settings: FetchSettings | None = None) -> Page:
    """Return the page at `url` with its readable text and title, or raise ToolError."""
    body, media_type = await fetch_url(url, settings)
    if media_type not in ("text/html", "application/xhtml+xml"):
        return Page(url=url, title="", text=body, media_type=media_type)
    title, text = await asyncio.to_thread(readable, body, url)
    return Page(url=url, title=title, text=text, media_type=media_type)


def readable(html: str, url: str) -> tuple[str, str]:
    """Return an HTML page's title and its main text, as plain text (never markup)."""
    document = trafilatura.bare_extraction(
        html, url=url, with_metadata=True, include_comments=False, include_tables=True
    )
    title = " ".join(str(getattr(document, "title", "") or "").split())
    text = str(getattr(document, "text", "") or "").strip()
    if not text:  # no main content found: all the page's text, as the extractor sees it
        text = (trafilatura.html2txt(html) or "").strip()
    return title, text


def _parse(url: str) -> httpx2.URL:
    try:
        parsed = httpx2.URL(url)
    except httpx2.InvalidURL as error:
        raise ToolError(f"fetch_url cannot use {url!r}: {error}") from None
    if parsed.scheme not in ("http", "https"):
        raise ToolError(f"fetch_url fetches http:// and https:// URLs only, not {url!r}")
    if not parsed.host:
        raise ToolError(f"fetch_url cannot use {url!r}: it names no host")
    return parsed


async def _text(response: httpx2.Response, settings: FetchSettings) -> tuple[str, str]:
    """Return a response's body as text, refusing errors, non-text and oversized bodies."""
    url = response.url
    if response.status_code >= 400 or response.status_code < 200:
        raise ToolError(
            f"fetch_url got HTTP {response.status_code} {response.reason_phrase} from {url}"
        )
    media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if not _is_text(media_type):
        shown = media_type or "no content type"
        raise ToolError(f"fetch_url returns text only; {url} is {shown}")
    limit = settings.max_bytes
    declared = response.headers.get("content-length", "")
    too_large = ToolLimitExceeded(
        f"fetch_url refused {url}: the page is larger than its size limit ({limit:,} bytes)"
    )
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            raise too_large
    encoding = response.charset_encoding or "utf-8"
    try:
        return body.decode(encoding, errors="replace"), media_type
    except (LookupError, ValueError):  # an unknown charset, or one like idna that fails
        return body.decode("utf-8", errors="replace"), media_type


def _is_text(media_type: str) -> bool:
    return media_type.startswith(TEXT_TYPES) or media_type.endswith(("+json", "+xml"))


def _with_embedded(address: IPAddress) -> Iterable[IPAddress]:
    """Return the address and any IPv4 address an IPv6 form of it carries."""
    yield address
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            yield address.ipv4_mapped
        if address.sixtofour is not None:
            yield address.sixtofour
        if address.teredo is not None:
            yield from address.teredo
        if address in _NAT64:
            yield ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)


class _Refused(Exception):
    """A connection the address policy refused; the message says to what and why."""


class _CheckedBackend(httpcore2.AsyncNetworkBackend):
    """Resolves a host once, checks every address, and connects to a checked address."""

    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy
        self._backend = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        addresses = await _resolve(host, port)
        for address in addresses:
            if (reason := self._policy(address, port)) is not None:
                shown = host if host == str(address) else f"{host} ({address})"
                raise _Refused(f"{shown} is {reason}")
        error: Exception = _Refused(f"{host} resolves to no address")
        for address in addresses:
            try:
                return await self._backend.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address
                )
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as failure:
                error = failure
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise _Refused("unix sockets are not fetched")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _resolve(host: str, port: int) -> list[IPAddress]:
    """Return the addresses `host` resolves to, in the resolver's order, each once."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except socket.gaierror as error:
        raise _Refused(f"{host} cannot be resolved ({error.strerror})") from None
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


class _ResponseStream(httpx2.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._stream:
            yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class _CheckedTransport(httpx2.AsyncBaseTransport):
    """httpx's transport over a connection pool whose every connection is checked."""

    def __init__(self, policy: AddressPolicy) -> None:
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=ssl.create_default_context(),
            network_backend=_CheckedBackend(policy),
            max_connections=4,
        )

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        assert isinstance(request.stream, httpx2.AsyncByteStream)
        core_request = httpcore2.Request(
            method=request.method,
            url=httpcore2.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        response = await self._pool.handle_async_request(core_request)
        assert isinstance(response.stream, AsyncIterable)
        return httpx2.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


@contextlib.asynccontextmanager
async def _client(settings: FetchSettings) -> AsyncIterator[httpx2.AsyncClient]:
    headers = {
        "User-Agent": _USER_AGENT,
        "Accept": "text/html, text/plain;q=0.9, application/json;q=0.9, */*;q=0.1",
        "Accept-Encoding": "identity",
    }
    client = httpx2.AsyncClient(
        transport=_CheckedTransport(settings.policy),
        follow_redirects=False,
        trust_env=False,  # no proxy from the environment: connections go where checked
        timeout=settings.timeout,
        headers=headers,
    )
    async with client:
        yield client


_TRANSPORT_ERRORS = (
    httpcore2.NetworkError,
    httpcore2.TimeoutException,
    httpcore2.ProtocolError,
    httpcore2.UnsupportedProtocol,
    ssl.SSLError,
    OSError,
)


def _describe(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text.splitlines()[0]
