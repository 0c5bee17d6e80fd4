"""(d) Generation tokens/s: ``MedVLM.generate`` against ``LlavaForConditionalGeneration.generate``.

The same model and weights as ``train_speed.py``; prompts are the mix's questions (chat template up to
the generation prompt, the image's 64 tokens included), left-padded into one batch; greedy decoding with
KV cache, exactly ``--new-tokens`` new tokens per prompt (``min_new_tokens`` = ``max_new_tokens``), fp32.
Runs alternate between the two so machine load hits both alike; both must produce the same tokens.

Usage: ``python experiments/bench/generate_speed.py [--batch-size 8 --new-tokens 32 --repeats 2]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import common
import torch

from medmvl.data.collate import Collator
from medmvl.data.conversation import IGNORE_INDEX


def prompts(items: list[dict]) -> list[dict]:
    """Each sample cut before its first supervised token: exactly the prompt ``generate`` would get."""
    out = []
    for it in items:
        first = int((it["labels"] != IGNORE_INDEX).nonzero()[0])
        out.append({**it, "input_ids": it["input_ids"][:first], "labels": it["labels"][:first]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    common.add_threads_arg(parser)
    args = parser.parse_args()
    common.set_threads(args.threads)
    model, _ = common.build_model()
    model.eval()
    folder = Path(tempfile.mkdtemp(prefix="medmvl-bench-"))
    items = common.items(model, common.write_mix(folder, args.batch_size, seed=1))
    batch = Collator(model.tokenizer.pad_token_id, padding_side="left")(prompts(items))
    twin = common.llava_twin(model).eval()
    kwargs = {
        "max_new_tokens": args.new_tokens,
        "min_new_tokens": args.new_tokens,
        "do_sample": False,
        "pad_token_id": model.tokenizer.pad_token_id,
        "eos_token_id": model.tokenizer.eos_token_id,
    }
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    width = batch["input_ids"].shape[1]
    outputs: dict[str, torch.Tensor] = {}

    def run(name: str) -> None:
        with torch.no_grad():
            if name == "medmvl":
                outputs[name] = model.generate(**inputs, **kwargs)  # [b, new]
            else:
                outputs[name] = twin.generate(**inputs, **kwargs)[:, width:]  # [b, new]

    run("medmvl"), run("hf")  # warm-up
    times: dict[str, list[float]] = {"medmvl": [], "hf": []}
    for i in range(args.repeats):
        for name in ("medmvl", "hf") if i % 2 == 0 else ("hf", "medmvl"):
            times[name].append(common.timed(lambda: run(name)))  # noqa: B023
    new = args.batch_size * args.new_tokens
    result = {
        "machine": common.machine(),
        "args": vars(args),
        "prompt_tokens": int(batch["attention_mask"].sum()),
        "same_tokens": float((outputs["medmvl"] == outputs["hf"]).float().mean()),
        **{
            name: {"tokens_per_s": new / min(t), "seconds": [round(x, 3) for x in t]}
            for name, t in times.items()
        },
    }
    result["ratio"] = result["medmvl"]["tokens_per_s"] / result["hf"]["tokens_per_s"]
    print(result)
    common.save("generate", result)


if __name__ == "__main__":
    main()
