"""What structured outputs cost per generated token: one batch of prompts decoded to a fixed length
with no grammar, then with each grammar, taking turns round by round.

    python bench/structured_outputs.py [--preset small] [--num-prompts 64] [--output-len 64] [--repeat 3]

EOS is ignored and every grammar is unbounded (it never forces the end), so each run makes exactly
num_prompts x output_len tokens and the difference is the grammar's work: the matchers' masks on the
host (llguidance), their copy to the device and the sampler's masking. Prints a markdown table of
output tok/s (best of the rounds) and each grammar's ratio to no grammar.
"""

from __future__ import annotations

from kvserve import Engine, SamplingParams, StructuredOutputsParams
from kvserve.bench.checkpoint import ensure_model
from kvserve.bench.turns import output_rate, taking_turns, turns_parser

GRAMMARS = {
    "none": None,
    "regex [a-z ]*": StructuredOutputsParams(regex="[a-z ]*"),
    "json_object": StructuredOutputsParams(json_object=True),
    "json schema, array of objects": StructuredOutputsParams(json={
        "type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "age": {"type": "integer"}, "tags": {"type": "array", "items": {
                "enum": ["red", "green", "blue"]}}}, "required": ["name", "age", "tags"]}}),
}


def run(engine: Engine, prompts: list[str], grammar, output_len: int) -> float:
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True, structured_outputs=grammar)
    return output_rate(lambda: engine.generate(prompts, params, use_tqdm=False), len(prompts) * output_len)


def main(argv: list[str] | None = None) -> list[tuple[str, float, list[float]]]:
    args = turns_parser(__doc__.splitlines()[0], "--output-len", 64).parse_args(argv)
    engine = Engine(args.model or str(ensure_model(args.preset)), dtype=args.dtype)
    prompts = [f"Request {i}: describe the weather in one line." for i in range(args.num_prompts)]
    run(engine, prompts[:4], GRAMMARS["json_object"], 8)  # warm-up (and the tokenizer for llguidance)
    runs = {name: lambda grammar=grammar: run(engine, prompts, grammar, args.output_len)
            for name, grammar in GRAMMARS.items()}
    return taking_turns(runs, args.repeat, "grammar", "none")


if __name__ == "__main__":
    main()
