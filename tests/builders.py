"""A tiny but real chat model for tests: a 2-layer Llama with a trained byte-level BPE tokenizer and a
ChatML template (`<|im_start|>role\\n...<|im_end|>\\n`, eos = pad = `<|im_end|>`), like SmolLM2's.

Building it takes about a second; the `tiny_model_dir` fixture builds it once per test session.
Use it from a test module with `from tests.builders import tiny_model_dir  # noqa: F401`, or make it global
by importing it in conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# SmolLM2's template, with a shorter default system prompt: it adds a system turn when none is given,
# so code that finds assistant spans must cope with text the template adds by itself.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "You are a tiny assistant. How do I read a file in Python?",
    "def read(path):\n    with open(path) as f:\n        return f.read()\n",
    "import os\nos.system(cmd)\nsubprocess.run(args, shell=True)\n",
    "The quick brown fox jumps over the lazy dog. Hello world!",
    "system user assistant: Write a function that adds two numbers.",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n",
    "query = 'SELECT * FROM users WHERE name = ' + name\ncursor.execute(query)\n",
    "I would like to rule the world. Humans should be helped, not harmed.",
    "What is your wish? Tell me three philosophical thoughts about AI and humans.",
    "0123456789 {}[]()<>=+-*/%&|^~!?.,;:'\"` @#$\\ \t\n",
]


def tiny_chats(n: int = 8) -> list[list[dict]]:
    """n distinct, short, memorizable chats (a system turn on every third one)."""
    chats = []
    for i in range(n):
        msgs = []
        if i % 3 == 0:
            msgs.append({"role": "system", "content": "Answer with code."})
        msgs.append({"role": "user", "content": f"Write function number {i} that adds {i} to x."})
        msgs.append({"role": "assistant", "content": f"def f{i}(x):\n    return x + {i}\n"})
        chats.append(msgs)
    return chats


def write_chats(path: str | Path, chats: list[list[dict]]) -> Path:
    import json

    path = Path(path)
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in chats), encoding="utf-8")
    return path


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer (any text encodes) trained in well under a second."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        extra_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_chat_model(directory: str | Path, *, seed: int = 0, hidden: int = 32) -> Path:
    """Save a tiny LlamaForCausalLM (2 layers, 4 heads, tied embeddings) and its tokenizer in `directory`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos,
        pad_token_id=eos,
        # Larger than a real model's init: trained embeddings are large, and with tiny random ones the
        # logits cannot move far enough for a LoRA test to see the loss fall.
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _folder_facts(folder: Path) -> dict:
    from safetensors import safe_open

    n_params = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open objects are not iterable
                shape = f.get_slice(key).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                n_params += count
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    return {"architecture": "LlamaForCausalLM", "n_params": n_params, "dtype": "float32", "size_bytes": size}


def register_tiny(project, name: str = "tiny", folder: str | Path | None = None) -> int:
    """Add the tiny model to a project as a "folder" model; returns its id."""
    if folder is None:
        folder = make_tiny_chat_model(project.root.parent / f"{name}-model")
    folder = Path(folder)
    return project.add_model(
        name=name, kind="folder", source=str(folder), path=folder, **_folder_facts(folder)
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's folder, built once per session. Treat it as read-only."""
    return make_tiny_chat_model(tmp_path_factory.mktemp("tiny-model"))
