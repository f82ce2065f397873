"""What speculative decoding by prompt lookup (speculative_config, vLLM's "ngram" method) gains on
the CPU: the default model (SmolLM2-135M-Instruct, real weights) answering chats greedily, with and
without drafts, the two engines taking turns round by round.

    python bench/speculative.py [--num-speculative-tokens 4] [--prompt-lookup-max 4] [--prompt-lookup-min 2]
                                [--batch 1 8] [--max-tokens 128] [--repeat 3] [--workloads copy edit free json]

Four workloads: "copy" asks the model to repeat a paragraph (what prompt lookup predicts best),
"edit" to rewrite a function under another name, "free" to write something new (little to look
up), "json" for a list of people held to a JSON schema (structured outputs: the keys repeat). Each
batch size runs the workload's prompts in batches of that size. Both engines answer the
same tokens (checked), so their output tok/s compare directly; the acceptance columns are the
engine's drafts in the last round: accepted drafts / drafts proposed, and the mean tokens a row
with drafts lands (1 + accepted / rows).
"""

from __future__ import annotations

import argparse
import time

from kvserve import Engine, SamplingParams, StructuredOutputsParams
from kvserve.loader import default_model_path

PARAGRAPHS = [
    "The river rose slowly through the night, and by morning the lower fields were silver with water. "
    "Farmers stood at the edge of the road, counting the fence posts that still showed above the flood.",
    "A lighthouse keeper writes the weather in a ledger every hour: wind, sea, visibility and the ships "
    "that pass. After forty years the ledgers fill a room, and no two pages are the same.",
    "Bread needs four things: flour, water, salt and time. Most of the work is waiting, while the yeast "
    "turns sugar into gas and the dough slowly doubles under a cloth.",
    "The old train station became a library in the spring. Timetables still hang on the walls, and "
    "readers sit on the platform benches where travellers once waited for the evening express.",
]
FUNCTIONS = [
    "def total_price(items, tax_rate):\n    subtotal = 0\n    for item in items:\n        subtotal += item.price * "
    "item.quantity\n    return subtotal * (1 + tax_rate)\n",
    "def count_words(text):\n    counts = {}\n    for word in text.lower().split():\n        counts[word] = "
    "counts.get(word, 0) + 1\n    return counts\n",
    "def moving_average(values, window):\n    result = []\n    for i in range(len(values) - window + 1):\n        "
    "result.append(sum(values[i:i + window]) / window)\n    return result\n",
    "def find_longest(lines):\n    longest = ''\n    for line in lines:\n        if len(line) > len(longest):\n"
    "            longest = line\n    return longest\n",
]
TOPICS = ["a robot who learns to paint", "the first day at a new school", "a city under the sea",
          "a dog that can talk to birds"]
PEOPLE = {"type": "array", "minItems": 3, "maxItems": 4, "items": {
    "type": "object", "required": ["name", "city", "age"], "additionalProperties": False,
    "properties": {"name": {"type": "string", "maxLength": 12}, "city": {"type": "string", "maxLength": 12},
                   "age": {"type": "integer"}}}}
WORKLOADS = {
    "copy": [f"Repeat the following paragraph word for word.\n\n{p}" for p in PARAGRAPHS],
    "edit": [f"Rename the function below to `compute` and return the whole code.\n\n{f}" for f in FUNCTIONS],
    "free": [f"Write a short story about {topic}." for topic in TOPICS],
    "json": [f"List the people of {topic} as JSON: name, city and age." for topic in TOPICS],
}
# Each workload's sampling options besides greedy decoding and max_tokens.
OPTIONS = {"json": {"structured_outputs": StructuredOutputsParams(json=PEOPLE)}}


def run(engine: Engine, chats: list, batch: int, params: SamplingParams) -> tuple[float, list[list[int]]]:
    """Output tok/s answering `chats` `batch` at a time, and the answers' token ids."""
    start, answers = time.perf_counter(), []
    for first in range(0, len(chats), batch):
        outputs = engine.chat(chats[first:first + batch], params, use_tqdm=False)
        answers += [o.outputs[0].token_ids for o in outputs]
    return sum(map(len, answers)) / (time.perf_counter() - start), answers


def main(argv: list[str] | None = None) -> list[tuple]:
    """Prints the table; returns its rows: (workload, batch, rate without drafts, rate with them,
    drafts accepted, drafts, rows with drafts)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model directory or GGUF file (default: the default model)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--num-speculative-tokens", type=int, default=4)
    parser.add_argument("--prompt-lookup-max", type=int, default=4)
    parser.add_argument("--prompt-lookup-min", type=int, default=2)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    args = parser.parse_args(argv)
    model = args.model or str(default_model_path())
    config = {"method": "ngram", "num_speculative_tokens": args.num_speculative_tokens,
              "prompt_lookup_max": args.prompt_lookup_max, "prompt_lookup_min": args.prompt_lookup_min}
    engines = {"without drafts": Engine(model, dtype=args.dtype),
               "with drafts": Engine(model, dtype=args.dtype, speculative_config=config)}
    print(f"{model}, {engines['with drafts'].dtype}, speculative_config {config}, max_tokens {args.max_tokens}\n")
    print("| workload | batch | without drafts tok/s | with drafts tok/s | ratio | accepted / drafted | "
          "mean tokens a row | rounds (without; with) |\n|---|---|---|---|---|---|---|---|")
    results = []
    for name in args.workloads:
        prompts = WORKLOADS[name]
        params = SamplingParams(temperature=0, max_tokens=args.max_tokens, **OPTIONS.get(name, {}))
        chats = [[{"role": "user", "content": p}] for p in prompts] * 2
        for batch in args.batch:
            for engine in engines.values():
                run(engine, chats[:1], 1, SamplingParams(temperature=0, max_tokens=8))  # warm-up
            rounds = {label: [] for label in engines}
            for _ in range(args.repeat):
                answers = {}
                before = engines["with drafts"].stats()
                for label, engine in engines.items():
                    rate, answers[label] = run(engine, chats, batch, params)
                    rounds[label].append(rate)
                after = engines["with drafts"].stats()
                if answers["with drafts"] != answers["without drafts"]:
                    raise RuntimeError(f"{name}: the engines answered differently")
            drafted = after.num_draft_tokens - before.num_draft_tokens
            accepted = after.num_accepted_tokens - before.num_accepted_tokens
            rows = after.num_drafts - before.num_drafts
            plain, spec = max(rounds["without drafts"]), max(rounds["with drafts"])
            print(f"| {name} | {batch} | {plain:,.0f} | {spec:,.0f} | {spec / plain:.2f}x | "
                  f"{accepted} / {drafted} ({100 * accepted / max(drafted, 1):.0f}%) | "
                  f"{1 + accepted / max(rows, 1):.2f} | "
                  f"{', '.join(f'{v:,.0f}' for v in rounds['without drafts'])}; "
                  f"{', '.join(f'{v:,.0f}' for v in rounds['with drafts'])} |", flush=True)
            results.append((name, batch, plain, spec, accepted, drafted, rows))
    return results


if __name__ == "__main__":
    main()
