"""The gRPC client of a Triton server (embedded or external) as the ranking stage calls it.

Request of one user: item_ids int64 [1, n], user_features float32 [1, D], candidate_features float32
[1, n*F] -> scores float32 [1, n] (the repository's contract: runners/triton/repository.py).
"""

from __future__ import annotations

import asyncio
from typing import TypeAlias

import numpy as np
import tritonclient.grpc.aio as grpcaio

from models.version import Precision
from runners.platform import tracing
from runners.triton.repository import model_name

Client: TypeAlias = grpcaio.InferenceServerClient


def open_client(url: str) -> Client:
    ka = grpcaio.KeepAliveOptions()
    # tritonclient's defaults, plus a short reconnect backoff: after a restart the channel reconnects
    # within ~1 s instead of gRPC's default exponential backoff (up to 120 s). min_reconnect_backoff
    # doubles as the connect timeout (default 20 s).
    args = {
        "grpc.max_send_message_length": grpcaio.MAX_GRPC_MESSAGE_SIZE,
        "grpc.max_receive_message_length": grpcaio.MAX_GRPC_MESSAGE_SIZE,
        "grpc.keepalive_time_ms": ka.keepalive_time_ms,
        "grpc.keepalive_timeout_ms": ka.keepalive_timeout_ms,
        "grpc.keepalive_permit_without_calls": ka.keepalive_permit_without_calls,
        "grpc.http2.max_pings_without_data": ka.http2_max_pings_without_data,
        "grpc.initial_reconnect_backoff_ms": 200,
        "grpc.min_reconnect_backoff_ms": 1000,
        "grpc.max_reconnect_backoff_ms": 1000,
    }
    return grpcaio.InferenceServerClient(url, channel_args=list(args.items()))


def ranker_inputs(ids: np.ndarray, user: np.ndarray, feats: np.ndarray) -> list[grpcaio.InferInput]:
    """One user's ranking request: ids int64 [n], user float32 [1, D], features float32 [n*F]."""
    inputs = [
        grpcaio.InferInput("item_ids", [1, ids.size], "INT64"),
        grpcaio.InferInput("user_features", list(user.shape), "FP32"),
        grpcaio.InferInput("candidate_features", [1, feats.size], "FP32"),
    ]
    inputs[0].set_data_from_numpy(ids.reshape(1, -1))
    inputs[1].set_data_from_numpy(user)
    inputs[2].set_data_from_numpy(feats.reshape(1, -1))
    return inputs


async def score(
    client: Client,
    precision: Precision,
    ids: np.ndarray,
    user: np.ndarray,
    feats: np.ndarray,
    timeout_s: float,
) -> np.ndarray:
    """float32 [n] scores from the Triton model of ``precision``; raises on any failure. Traced as
    ``triton_call`` when the request is (runners/platform/tracing.py)."""
    model = model_name(precision)
    with tracing.span("triton_call") as span:
        if span is not None:
            span.set_attributes({"folio.triton.model": model, "folio.candidates": ids.size})
        result = await client.infer(
            model,
            ranker_inputs(ids, user, feats),
            outputs=[grpcaio.InferRequestedOutput("scores")],
            client_timeout=timeout_s,
        )
    scores = result.as_numpy("scores")
    if scores is None or scores.size != ids.size:
        raise RuntimeError(f"Triton returned {None if scores is None else scores.shape} for {ids.size} ids")
    return scores.reshape(-1).astype(np.float32, copy=False)


async def model_ready(client: Client | None, precision: Precision, timeout_s: float = 1.0) -> bool:
    """Server ready and the model of ``precision`` loaded (never raises)."""
    if client is None:
        return False

    async def check() -> bool:
        ok = await client.is_server_ready(client_timeout=timeout_s)
        return bool(ok and await client.is_model_ready(model_name(precision), client_timeout=timeout_s))

    try:
        return await asyncio.wait_for(check(), timeout_s)
    except Exception:
        return False
