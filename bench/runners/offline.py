"""One engine, one offline case, in its own process (and, for vLLM, its own venv): load the model,
run one warm-up request, then time every prompt submitted at once. kvserve is measured by
`kvserve bench throughput` instead, the same way.

    python offline.py --engine vllm --model DIR --prompts P.npz --output-len OUT --dtype bfloat16 --result R.json \
        [--engine-args '{"gpu_memory_utilization": 0.25}']

P.npz holds `prompts` [N, IN] and the `warmup` prompt [1, IN] (kvserve.bench.datasets draws both).
It needs only numpy and the engine. The result JSON holds the timing, or `skipped` with the reason
when the engine cannot run here; the parent (compare.py) measures peak RSS and startup from outside.
Every request must come back with exactly OUT tokens, or the run fails: a figure is never faked.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ENGINES = ("vllm", "hf-sequential", "hf-batch")


def _vllm(model: str, dtype: str, output_len: int, engine_args: dict):
    from vllm import LLM, SamplingParams

    engine = LLM(model=model, dtype=dtype, **engine_args)
    params = SamplingParams(max_tokens=output_len, min_tokens=output_len, ignore_eos=True, temperature=0.0,
                            detokenize=False)

    def generate(batch: np.ndarray) -> list[list[int]]:
        outputs = engine.generate([{"prompt_token_ids": p.tolist()} for p in batch], params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outputs]

    return generate


def _hf(model: str, dtype: str, output_len: int, batched: bool):
    import torch
    import transformers

    lm = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).eval()
    # min_new_tokens suppresses EOS: every request generates exactly output_len tokens, greedily.
    options = {"max_new_tokens": output_len, "min_new_tokens": output_len, "do_sample": False}

    @torch.inference_mode()
    def generate(batch: np.ndarray) -> list[list[int]]:
        ids = torch.from_numpy(batch)
        if batched:  # equal prompt lengths: one static batch, no padding
            return lm.generate(ids, attention_mask=torch.ones_like(ids), **options)[:, ids.shape[1]:].tolist()
        return [lm.generate(p[None], attention_mask=torch.ones_like(p[None]), **options)[0, ids.shape[1]:].tolist()
                for p in ids]

    return generate


def load(engine: str, model: str, dtype: str, output_len: int, engine_args: dict):
    if engine == "vllm":
        return _vllm(model, dtype, output_len, engine_args)
    return _hf(model, dtype, output_len, batched=engine == "hf-batch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=ENGINES, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompts", type=Path, required=True, help=".npz: prompts int64 [N, IN], warmup [1, IN]")
    parser.add_argument("--output-len", type=int, required=True)
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--engine-args", type=json.loads, default={}, help="JSON: extra Engine/LLM keyword arguments")
    args = parser.parse_args()
    with np.load(args.prompts) as arrays:
        prompts, warmup = arrays["prompts"], arrays["warmup"]
    try:
        generate = load(args.engine, args.model, args.dtype, args.output_len, args.engine_args)
    except ModuleNotFoundError as e:
        args.result.write_text(json.dumps({"engine": args.engine, "skipped": str(e)}) + "\n")
        return
    ready = time.time()
    generate(warmup)
    start = time.perf_counter()
    outputs = generate(prompts)
    wall = time.perf_counter() - start
    lengths = sorted({len(o) for o in outputs})
    if len(outputs) != len(prompts) or lengths != [args.output_len]:
        raise SystemExit(f"{args.engine}: expected {len(prompts)} outputs of {args.output_len} tokens, "
                         f"got {len(outputs)} with lengths {lengths}")
    num_output = len(prompts) * args.output_len
    result = {
        "engine": args.engine,
        "dtype": args.dtype,
        "engine_args": args.engine_args,
        "ready_unix_s": ready,
        "wall_s": wall,
        "output_tok_s": num_output / wall,
        "total_tok_s": (prompts.size + num_output) / wall,
        "env": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "VLLM_CPU", "LD_PRELOAD"))},
    }
    args.result.write_text(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
