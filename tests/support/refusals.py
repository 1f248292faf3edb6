"""Reading a refusal's google.rpc.ErrorInfo (AIP-193) off a real call's error."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2

from mitosis.client.errors import error_info


def reason_of(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo the refusal carries (it must carry one, in Mitosis's domain)."""
    info = error_info(error.trailing_metadata())
    assert info is not None, error.details()
    assert info.domain == "mitosis.dev"
    return info
