"""vLLM's score and rerank endpoints over a pooling server: the relevance of two texts is the cosine
similarity of their embeddings (an embedding model's, as vLLM scores them), or a cross-encoder's
score of the pair (a classifier of one class: the pair is one prompt, kvserve.classify).

    POST /score, /v1/score            text_1 (one text, or one per text_2) against each text_2:
                                      {"data": [{"index", "object": "score", "score"}], "usage"}
    POST /rerank, /v1/rerank, /v2/rerank   Jina's and Cohere's API: the documents by relevance to
                                      the query, the top_n first: {"results": [{"index",
                                      "document": {"text"}, "relevance_score"}], "usage"}

Each distinct text is embedded once; a cross-encoder computes each pair.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from kvserve.pooling import PoolingParams, cosine_similarity, score_pairs
from kvserve.server.async_engine import EnginePrompt
from kvserve.server.embeddings import check_pooling_request, run_pooled
from kvserve.server.errors import bad_request
from kvserve.server.protocol import RerankRequest, ScoreRequest
from kvserve.server.served_model import ServedModel

router = APIRouter()


async def _similarities(raw_request: Request, model: str | None, firsts: list[str], seconds: list[str], *,
                        param: str, truncate: int | None, priority: int, prefix: str,
                        use_activation: bool | None) -> tuple[str, str, list[float], int] | None:
    """(request id, the model's name in the answer, the relevance of each pair, the prompt tokens
    pooled); None where the client left."""
    served: ServedModel = raw_request.app.state.model
    lora = check_pooling_request(raw_request, model, priority)
    if served.classifier is not None:
        return await _cross_encoded(raw_request, served, lora, firsts, seconds, param=param, truncate=truncate,
                                    priority=priority, prefix=prefix, use_activation=use_activation)
    texts = list(dict.fromkeys(firsts + seconds))
    prompts = await asyncio.to_thread(lambda: [EnginePrompt(served.encode(t, True, param), t) for t in texts])
    request_id, prompts, outputs = await run_pooled(raw_request, prompts, PoolingParams(truncate_prompt_tokens=truncate),
                                                    param=param, priority=priority, prefix=prefix, lora=lora)
    if outputs is None:
        return None
    vectors = dict(zip(texts, (o.outputs.data for o in outputs)))
    scores = [cosine_similarity(vectors[a], vectors[b]) for a, b in zip(firsts, seconds)]
    return request_id, served.response_name(lora), scores, sum(len(p.token_ids) for p in prompts)


async def _cross_encoded(raw_request: Request, served: ServedModel, lora, firsts: list[str], seconds: list[str], *,
                         param: str, truncate: int | None, priority: int, prefix: str,
                         use_activation: bool | None) -> tuple[str, str, list[float], int] | None:
    """_similarities for a cross-encoder: each pair is one prompt (the tokenizer's pair encoding),
    scored by its logit's sigmoid, or with use_activation False by the logit."""
    try:
        served.classifier.check_cross_encoder()
    except ValueError as e:
        raise bad_request(str(e), "model") from None
    prompts = await asyncio.to_thread(
        lambda: [EnginePrompt(served.tokenizer.encode_pair(a, b)) for a, b in zip(firsts, seconds)])
    request_id, prompts, outputs = await run_pooled(raw_request, prompts, PoolingParams(truncate_prompt_tokens=truncate),
                                                    param=param, priority=priority, prefix=prefix, lora=lora)
    if outputs is None:
        return None
    scores = [served.classifier.relevance(o.outputs.data, use_activation) for o in outputs]
    return request_id, served.response_name(lora), scores, sum(len(p.token_ids) for p in prompts)


@router.post("/score")
@router.post("/v1/score")
async def score(body: ScoreRequest, raw_request: Request):
    try:
        firsts, seconds = map(list, zip(*score_pairs(body.text_1, body.text_2)))
    except ValueError as e:
        raise bad_request(f"text_1, text_2: {e}", "text_1") from None
    result = await _similarities(raw_request, body.model, firsts, seconds, param="text_1",
                                 truncate=body.truncate_prompt_tokens, priority=body.priority, prefix="score",
                                 use_activation=body.use_activation)
    if result is None:
        return Response(status_code=499)  # nobody will read it: the client is gone
    request_id, model_name, scores, num_tokens = result
    return JSONResponse({"id": request_id, "object": "list", "created": int(time.time()), "model": model_name,
                         "data": [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)],
                         "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens}})


@router.post("/rerank")
@router.post("/v1/rerank")
@router.post("/v2/rerank")
async def rerank(body: RerankRequest, raw_request: Request):
    documents = body.documents
    result = await _similarities(raw_request, body.model, [body.query] * len(documents), documents, param="documents",
                                 truncate=body.truncate_prompt_tokens, priority=body.priority, prefix="rerank",
                                 use_activation=body.use_activation)
    if result is None:
        return Response(status_code=499)
    request_id, model_name, scores, num_tokens = result
    ranked = sorted(range(len(documents)), key=lambda i: -scores[i])[:body.top_n or None]
    return JSONResponse({"id": request_id, "model": model_name,
                         "usage": {"total_tokens": num_tokens},
                         "results": [{"index": i, "document": {"text": documents[i]}, "relevance_score": scores[i]}
                                     for i in ranked]})
