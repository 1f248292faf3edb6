"""TLS between client and executor, mutual TLS and a key between executor and planner, and
the whole chain: HTTPS at the gateway, TLS from Envoy to the executors and on to the planner."""

from __future__ import annotations

import asyncio
import re
import ssl
import urllib.request
from pathlib import Path

import grpc
import pytest

from mitosis.client import AsyncClient
from mitosis.executor.server import Executor
from mitosis.gateway import GatewaySettings
from mitosis.rpc.tls import TlsConfigError, channel_credentials
from mitosis.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc
from scripts.run import tls_from
from tests.certs import TestAuthority
from tests.gateway import Gateway
from tests.support.executors import StartExecutor
from tests.support.make_run import running
from tests.support.tls_stack import (
    EXECUTOR_KEY,
    authority,
    planner,
    start,
    tls_executor,
    tls_gateway,
)
from tests.support.watch import each_event

__all__ = ["authority", "planner", "start", "tls_executor"]  # fixtures


async def run_task(executor: Executor, credentials: grpc.ChannelCredentials) -> task_pb2.Task:
    """Create a task over TLS, follow it to its end and return it."""
    async with grpc.aio.secure_channel(f"localhost:{executor.port}", credentials) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        task = await stub.CreateTask(task_service_pb2.CreateTaskRequest(text="Explain tides."))
        request = task_service_pb2.WatchTaskRequest(task_id=task.task_id)
        async for _ in each_event(stub.WatchTask(request, timeout=60)):
            pass
        return await stub.GetTask(task_service_pb2.GetTaskRequest(task_id=task.task_id))


async def test_a_task_runs_over_tls_end_to_end(
    start: StartExecutor, authority: TestAuthority, tmp_path: Path
) -> None:
    client = authority.issue("executor-client", server=False)
    executor = await start(
        f"--planner-ca={authority.cert}",
        f"--planner-client-cert={client.cert}",
        f"--planner-client-key={client.key}",
        f"--planner-key={EXECUTOR_KEY}",
    )
    credentials = channel_credentials(authority.cert)
    assert credentials is not None
    task = await run_task(executor, credentials)
    assert task.state == task_pb2.Task.STATE_SUCCEEDED, task.error


async def test_a_plaintext_client_cannot_talk_to_a_tls_executor(start: StartExecutor) -> None:
    executor = await start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}") as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListTasks(task_service_pb2.ListTasksRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_that_does_not_trust_the_ca_is_refused(
    start: StartExecutor, tmp_path: Path
) -> None:
    executor = await start()
    stranger = TestAuthority(tmp_path / "other-pki", "Someone else's CA")
    credentials = channel_credentials(stranger.cert)
    assert credentials is not None
    async with grpc.aio.secure_channel(f"localhost:{executor.port}", credentials) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListTasks(task_service_pb2.ListTasksRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_planner_refuses_an_executor_without_its_client_certificate(
    start: StartExecutor, authority: TestAuthority
) -> None:
    executor = await start(
        f"--planner-ca={authority.cert}", f"--planner-key={EXECUTOR_KEY}", "--planner-deadline=5"
    )
    credentials = channel_credentials(authority.cert)
    assert credentials is not None
    task = await run_task(executor, credentials)
    assert task.state == task_pb2.Task.STATE_FAILED
    assert "planner" in task.error


async def test_the_planner_refuses_an_executor_without_its_key(
    start: StartExecutor, authority: TestAuthority
) -> None:
    client = authority.issue("executor-client", server=False)
    executor = await start(
        f"--planner-ca={authority.cert}",
        f"--planner-client-cert={client.cert}",
        f"--planner-client-key={client.key}",
    )
    credentials = channel_credentials(authority.cert)
    assert credentials is not None
    task = await run_task(executor, credentials)
    assert task.state == task_pb2.Task.STATE_FAILED
    assert "refused the executor's credential" in task.error
    assert "--planner-key" in task.error


def test_tls_files_that_do_not_go_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TlsConfigError, match="a client certificate needs a CA"):
        channel_credentials(None, tmp_path / "c.pem", tmp_path / "k.pem")
    with pytest.raises(TlsConfigError, match="cannot read"):
        channel_credentials(tmp_path / "missing.pem")


async def test_a_task_runs_through_an_https_gateway_to_tls_executor_and_planner(
    tmp_path: Path, authority: TestAuthority, tls_executor: Executor
) -> None:
    gateway = await tls_gateway(tmp_path, authority, tls_executor)
    try:
        async with AsyncClient(f"localhost:{gateway.port}", tls_ca=authority.cert) as client:
            task = await client.create_task("Explain tides.")
            events = [event async for event in client.watch(task.task_id)]
            final = await client.get_task(task.task_id)
    finally:
        await gateway.astop()

    assert final.state == task_pb2.Task.STATE_SUCCEEDED, final.error
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


@pytest.mark.parametrize(
    ("offered", "chosen"), [(["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1")]
)
async def test_the_https_gateway_speaks_http2_to_whom_offers_it_and_http1_to_the_rest(
    tmp_path: Path,
    authority: TestAuthority,
    tls_executor: Executor,
    offered: list[str],
    chosen: str,
) -> None:
    gateway = await tls_gateway(tmp_path, authority, tls_executor)
    context = ssl.create_default_context(cafile=authority.cert)
    context.set_alpn_protocols(offered)
    try:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", gateway.port, ssl=context, server_hostname="localhost"
        )
        negotiated = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        writer.close()
        await writer.wait_closed()
    finally:
        await gateway.astop()

    assert negotiated == chosen


async def test_the_gateway_refuses_an_executor_whose_certificate_names_another_host(
    tmp_path: Path, authority: TestAuthority, tls_executor: Executor
) -> None:
    gateway = await tls_gateway(
        tmp_path, authority, tls_executor, executor_tls_name="executor.elsewhere.example"
    )
    try:
        async with grpc.aio.secure_channel(
            f"localhost:{gateway.port}", channel_credentials(authority.cert)
        ) as channel:
            stub = task_service_pb2_grpc.TaskServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListTasks(task_service_pb2.ListTasksRequest(), timeout=5)
        stats = await asyncio.to_thread(
            envoy_stat, gateway, "cluster.executors.ssl.fail_verify_san"
        )
    finally:
        await gateway.astop()

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert stats > 0


def envoy_stat(gateway: Gateway, name: str) -> int:
    """One counter of Envoy's, read from its admin interface."""
    url = f"http://127.0.0.1:{gateway.admin_port}/stats?filter=^{name}$"
    with urllib.request.urlopen(url, timeout=5) as response:
        line = response.read().decode().strip()
    return int(line.rsplit(": ", 1)[1])


def test_tls_to_executors_on_several_hosts_needs_the_name_their_certificates_carry(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match="executor_tls_name"):
        GatewaySettings(executors=(("a", 1), ("b", 1)), executor_ca=tmp_path / "ca.pem")
    named = GatewaySettings(
        executors=(("a", 1), ("b", 1)), executor_ca=tmp_path / "ca.pem", executor_tls_name="x"
    )
    assert '"sni": "x"' in named.render()


@pytest.mark.e2e
@pytest.mark.timeout(180)
async def test_make_run_with_the_tls_variables_is_tls_on_every_hop(
    tmp_path: Path, authority: TestAuthority
) -> None:
    server = authority.issue("Mitosis server", server=True)
    env = {
        "MITOSIS_TLS_CERT": str(server.cert),
        "MITOSIS_TLS_KEY": str(server.key),
        "MITOSIS_TLS_CA": str(authority.cert),
    }
    with running(tmp_path, env=env) as runner:
        offered = runner.wait_for(r"open (\S+)$", 1).group(1)
        async with AsyncClient(runner.gateway, tls_ca=authority.cert) as client:
            task = await client.create_task("Explain tides.")
            events = [event async for event in client.watch(task.task_id)]
            final = await client.get_task(task.task_id)
        output = runner.text()

    assert offered == f"https://{runner.gateway}/"
    assert final.state == task_pb2.Task.STATE_SUCCEEDED, final.error
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert re.search(r"planner serving on port \d+ \(TLS", output)
    assert re.search(r"executor serving on port \d+ \(TLS", output)
    assert "Handshake failed" not in output


def test_make_run_refuses_tls_variables_that_do_not_go_together(tmp_path: Path) -> None:
    cert, key, ca = (str(tmp_path / name) for name in ("s.crt", "s.key", "ca.pem"))
    with pytest.raises(SystemExit, match="set MITOSIS_TLS_CA"):
        tls_from({"MITOSIS_TLS_CERT": cert, "MITOSIS_TLS_KEY": key})
    with pytest.raises(SystemExit, match="go together"):
        tls_from({"MITOSIS_TLS_CERT": cert, "MITOSIS_TLS_CA": ca})
    with pytest.raises(SystemExit, match="mutual TLS"):
        tls_from(
            {
                "MITOSIS_TLS_CERT": cert,
                "MITOSIS_TLS_KEY": key,
                "MITOSIS_TLS_CA": ca,
                "MITOSIS_TLS_CLIENT_CA": ca,
            }
        )


def test_make_run_can_serve_https_in_front_of_plain_services(tmp_path: Path) -> None:
    tls = tls_from({"MITOSIS_GATEWAY_TLS_CERT": "g.crt", "MITOSIS_GATEWAY_TLS_KEY": "g.key"})
    assert (tls.cert, tls.ca) == (None, None)
    assert tls.gateway_cert == Path("g.crt").absolute()
