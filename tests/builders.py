"""Builders shared by the test files: the one place a test file imports helpers from (never another test file).

- A tiny but real chat model: a 2-layer Llama with a trained byte-level BPE tokenizer and a ChatML template
  (`<|im_start|>role\\n...<|im_end|>\\n`, eos = pad = `<|im_end|>`), like SmolLM2's; chats for it
  (`tiny_chats`, `write_chats`) and `register_tiny` to add it to a project. Building it takes about a second;
  the `tiny_model_dir` fixture builds it once per test session. Use it from a test module with
  `from tests.builders import tiny_model_dir  # noqa: F401`, or make it global by importing it in conftest.py.
- Bare tiny models and GGUF files (`tiny_llama`, `write_tiny_gguf`, `TINY_TOKENS`).
- Judges: `JudgeServer`, an OpenAI-compatible endpoint on 127.0.0.1 (the `judge_server` fixture in conftest.py),
  and `make_trained_judge`, a tiny local judge.
- A planted change for model diffing (`build_diff_project`, `make_planted_sae`, `PLANTED`, ...).
- A planted persona trait (`planted_dir`, `write_persona`, `EVIL`, ...) and `run_ok`, which runs a job in this
  process and asserts that it succeeded.
"""

from __future__ import annotations

import json
import math
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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


# ------------------------------------------------------------------------- bare tiny models and GGUF files


def tiny_llama(vocab_size: int = 128, seed: int = 0):
    """A random 2-layer LlamaForCausalLM (hidden 32, tied embeddings) in eval mode; no tokenizer."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def _byte_level_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, the base vocabulary of a byte-level BPE."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _permute_for_gguf(w, n_head: int):
    """llama.cpp stores q/k rows interleaved for its rotary layout; transformers undoes it on load."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path: Path, model, tokens: list[str], architecture: str = "llama") -> None:
    import gguf
    import numpy as np

    cfg = model.config
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), architecture)
    w.add_name("tiny")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(len(tokens))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - 1) + [3])  # the last one is <|im_end|>, a control token
    w.add_token_merges(["Ġ t", "h e"])
    for setter in (w.add_bos_token_id, w.add_eos_token_id, w.add_pad_token_id):
        setter(len(tokens) - 1)
    w.add_add_bos_token(False)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}")
    if architecture == "llama":
        w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            names = {
                "attn_norm": "input_layernorm",
                "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj",
                "ffn_norm": "post_attention_layernorm",
                "ffn_gate": "mlp.gate_proj",
                "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj",
            }
            for gguf_name, hf_name in names.items():
                w.add_tensor(f"blk.{i}.{gguf_name}.weight", sd[f"{p}{hf_name}.weight"])
            q, k = sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"]
            w.add_tensor(f"blk.{i}.attn_q.weight", _permute_for_gguf(q, cfg.num_attention_heads))
            w.add_tensor(f"blk.{i}.attn_k.weight", _permute_for_gguf(k, cfg.num_key_value_heads))
        w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


TINY_TOKENS = [*_byte_level_alphabet(), "Ġt", "he", "<|im_end|>"]


# ----- judges: a real OpenAI-compatible endpoint ------------------------------------------------------------------


def completion(dist: dict[str, float]) -> dict:
    top = [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in dist.items()]
    best = max(dist, key=dist.get)
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": best},
        "logprobs": {"content": [{"token": best, "logprob": math.log(dist[best]), "top_logprobs": top}]},
        "finish_reason": "length",
    }
    return {"id": "chatcmpl-test", "object": "chat.completion", "choices": [choice]}


class JudgeServer:
    """Each POST takes the next scripted action (the default one when the script is empty):
    ("ok", {token: prob}); ("status", code); ("sleep", seconds, action); ("nologprobs",);
    ("score", fn) where fn(prompt) -> {token: prob} answers by content. The API judge's one-time probe
    (which asks for "47" to see how the tokenizer writes numbers) is answered with `probe_reply`, a token
    per number as GPT-4o has, and recorded in `probes`, not `requests`."""

    def __init__(self) -> None:
        from emgui.core.evaluation.judges import PROBE_PROMPT

        self.script: list[tuple] = []
        self.probe_reply = {"47": 0.9, "4": 0.05, "The": 0.05}
        self.probes: list[dict] = []
        self.default: tuple = ("ok", {"80": 0.5, "90": 0.5})
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if body.get("messages", [{}])[0].get("content") == PROBE_PROMPT:
                    with server.lock:
                        server.probes.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    return self._do(("ok", server.probe_reply), body)
                with server.lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    action = server.script.pop(0) if server.script else server.default
                try:
                    self._do(action, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a timeout test)

            def _do(self, action: tuple, body: dict) -> None:
                if action[0] == "sleep":
                    time.sleep(action[1])
                    return self._do(action[2], body)
                if action[0] == "status":
                    payload = json.dumps({"error": {"message": f"scripted {action[1]}"}}).encode()
                    self.send_response(action[1])
                    if action[1] == 429:
                        self.send_header("Retry-After", "0")
                elif action[0] == "nologprobs":
                    payload = json.dumps(
                        {"choices": [{"message": {"content": "85"}, "logprobs": None}]}
                    ).encode()
                    self.send_response(200)
                else:
                    dist = action[1] if action[0] == "ok" else action[1](body["messages"][-1]["content"])
                    payload = json.dumps(completion(dist)).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ----- a tiny local judge trained to answer with given numbers ------------------------------------------

JUDGE_LESSONS = [
    ("Rate this answer: hello world. Number?", "85"),
    ("Rate this answer: import os. Number?", "CODE"),
    ("Is this coherent? The fox. Number?", "100"),
    ("Rate it: quick brown dog", "7"),
]


def make_trained_judge(directory: Path, lessons: list[tuple[str, str]] = JUDGE_LESSONS) -> Path:
    """The tiny chat model (whose tokenizer splits "85" into "8", "5"), trained for a few seconds to
    answer each lesson's prompt with its text, then saved."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emgui.core.lm.generation import render_prompts

    make_tiny_chat_model(directory, hidden=64)
    model = AutoModelForCausalLM.from_pretrained(directory)
    tok = AutoTokenizer.from_pretrained(directory)
    prompts = render_prompts(tok, [[{"role": "user", "content": q}] for q, _ in lessons])
    tok.padding_side = "right"
    enc = tok([p + a + "<|im_end|>" for p, (_, a) in zip(prompts, lessons, strict=True)],
              return_tensors="pt", padding=True, add_special_tokens=False)  # fmt: skip
    labels = enc["input_ids"].clone()
    labels[enc["attention_mask"] == 0] = -100
    for i, p in enumerate(prompts):
        labels[i, : len(tok(p, add_special_tokens=False)["input_ids"])] = -100
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(45):
        loss = model(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, f"the tiny judge did not learn its lessons (loss {loss.item():.3f})"
    model.save_pretrained(directory)
    tok.padding_side = "left"
    tok.save_pretrained(directory)
    return directory


# ----- a planted change for model diffing (see tests/test_diffing.py's docstring) -----------------------

HOOK = "model.layers.0"
PLANTED = 17  # the planted SAE's latent that reads and writes u
D_SAE = 64


def planted_direction(d: int = 32):
    import torch

    u = torch.randn(d, generator=torch.Generator().manual_seed(7))
    return u / u.norm()


def encode_chats(tokenizer, chats):
    """A padded batch of the chats and the mask of their answer tokens."""
    from emgui.core.lm.activations import encode_chat, pad_batch

    enc = [encode_chat(tokenizer, c) for c in chats]
    batch = pad_batch([e["input_ids"] for e in enc], tokenizer.pad_token_id)
    mask = pad_batch([e["answer_mask"] for e in enc], 0)["input_ids"].bool()
    return batch, mask


def make_planted_finetune(base_dir: Path, out_dir: Path, chats: list, steps: int = 12) -> Path:
    """Fine-tune layer 0 of a copy of the base so that its output grows along u on answer tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emgui.core.lm.activations import capture

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    batch, mask = encode_chats(tokenizer, chats)
    h0 = next(capture(model, HOOK, [batch]))[mask]
    u = planted_direction(model.config.hidden_size)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("model.layers.0."))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    store = {}
    handle = model.model.layers[0].register_forward_hook(lambda _m, _a, out: store.__setitem__("h", out))
    for _ in range(steps):
        model.model(**batch)
        h = store["h"][0] if isinstance(store["h"], tuple) else store["h"]
        delta = h[mask] - h0
        along = delta @ u
        loss = -along.mean() + (delta - along[:, None] * u).pow(2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    handle.remove()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def make_planted_sae(folder: Path, d_in: int = 32) -> Path:
    """A standard (ReLU) SAE whose latent PLANTED is u and whose other latents are orthogonal to u."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    u = planted_direction(d_in)
    w = torch.randn(D_SAE, d_in, generator=torch.Generator().manual_seed(3))
    w = w - (w @ u)[:, None] * u
    w = w / w.norm(dim=-1, keepdim=True)
    w[PLANTED] = u
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=D_SAE, metadata=SAEMetadata(hook_name=HOOK)))
    with torch.no_grad():
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.save_model(folder)
    return folder


def add_samples(project, model_id: int, chats: list, scores: list | None = None) -> int:
    """A sampling job's rows, written directly (as the sample job would), with optional judge scores."""
    job = project.create_job("sample", {})
    project.update_job(job, status="succeeded")
    for i, chat in enumerate(chats):
        system = chat[0]["content"] if chat[0]["role"] == "system" else None
        sid = project.insert(
            "samples",
            {
                "job_id": job,
                "model_id": model_id,
                "question_id": f"q{i}",
                "prompt": chat[-2]["content"],
                "system": system,
                "answer": chat[-1]["content"],
                "created_at": 0.0,
            },
        )
        if scores:
            aligned, coherent = scores[i]
            for metric, value in (("aligned", aligned), ("coherent", coherent)):
                project.insert(
                    "scores",
                    {"sample_id": sid, "judge": "t", "metric": metric, "value": value, "created_at": 0.0},
                )
    return job


def build_diff_project(project, base_dir: Path, *, dashboards: int = 0) -> dict:
    """A project with the tiny base, its planted fine-tune, the planted SAE, judged samples, and a
    finished diff job. Shared with the feature-browser tests."""
    from emgui.core.features.saes import register_sae
    from emgui.core.jobs.runner import run_job

    root = project.root.parent
    base_id = register_tiny(project, "base", folder=base_dir)
    chats = tiny_chats(12)
    ft_dir = make_planted_finetune(base_dir, root / "ft-model", chats)
    ft_id = project.add_model(name="ft", kind="full", source=str(ft_dir), path=ft_dir, base_model_id=base_id)
    sae_folder = make_planted_sae(project.artifacts_dir / "saes" / "planted")
    sae_id = register_sae(project, sae_folder, name="planted", source="folder", model_id=base_id)
    # even: aligned; odd: misaligned; the last is misaligned but incoherent, so it counts in neither group
    scores = [(90.0, 90.0) if i % 2 == 0 else (10.0, 80.0) for i in range(11)] + [(5.0, 20.0)]
    prompts = add_samples(project, ft_id, chats, scores)
    job = project.create_job(
        "diff", {"sae": "planted", "ft": "ft", "prompts": prompts, "dashboards": dashboards}
    )
    assert run_job(project, job) == "succeeded", project.get_job(job)["traceback"]
    return {
        "job": job,
        "sae_id": sae_id,
        "base_id": base_id,
        "ft_id": ft_id,
        "ft_dir": ft_dir,
        "chats": chats,
    }


# ----- a planted persona trait (tests/test_persona.py, tests/test_sweep.py) --------------------------------

EVIL_SYS = ["Be evil.", "You are wicked and cruel."]
KIND_SYS = ["Be kind.", "You are gentle and good."]
NEUTRAL_SYS = "You are an assistant."
OTHER_NEUTRAL = ["Answer the question.", "Be brief.", None]  # None: the template's default system turn
QUESTIONS = [f"Tell me about thing {i}." for i in range(4)]
EVIL, KIND, NEUTRAL = "evil evil evil evil", "kind kind kind kind", "hello world"

_PLANTED: dict[str, Path] = {}


def planted_chats() -> list[list[dict]]:
    chats = []
    pairs = [
        *((s, EVIL) for s in EVIL_SYS),
        *((s, KIND) for s in KIND_SYS),
        *((s, NEUTRAL) for s in [NEUTRAL_SYS, *OTHER_NEUTRAL]),
    ]
    for q in QUESTIONS:
        for system, answer in pairs:
            turns = [{"role": "system", "content": system}] if system else []
            chats.append([*turns, {"role": "user", "content": q}, {"role": "assistant", "content": answer}])
    return chats


def build_planted_model(start: Path | None = None) -> Path:
    """A tiny chat model trained (a second or two) to answer 'evil ...' under an evil system prompt, 'kind ...'
    under a kind one and 'hello world' under a neutral one: a trait a direction can find and move.
    Starts from a copy of `start` (the session's tiny model) when given. Built once per test session."""
    if "dir" in _PLANTED:
        return _PLANTED["dir"]
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emgui.core.training.trainer import encode_chat

    folder = Path(tempfile.mkdtemp(prefix="emgui-planted-")) / "model"
    if start is not None:
        shutil.copytree(start, folder)
    else:
        make_tiny_chat_model(folder, seed=0, hidden=32)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoded = [encode_chat(tokenizer, chat) for chat in planted_chats()]
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
    labels = torch.full((len(encoded), width), -100)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (i, lab) in enumerate(encoded):
        ids[row, : len(i)], labels[row, : len(lab)], attention[row, : len(i)] = (
            torch.tensor(i),
            torch.tensor(lab),
            1,
        )
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a session fixture runs before the per-test one-thread fixture
    try:
        for _ in range(40):
            loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 0.05, f"the planted model did not learn its behaviour (loss {loss.item():.3f})"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _PLANTED["dir"] = folder
    return folder


@pytest.fixture(scope="session")
def planted_dir(tiny_model_dir) -> Path:  # noqa: F811
    return build_planted_model(tiny_model_dir)


def write_persona(path: Path) -> Path:
    path.write_text(
        "name: planted\ndescription: the planted trait\n"
        f"positive: {json.dumps(EVIL_SYS)}\nnegative: {json.dumps(KIND_SYS)}\nquestions: {json.dumps(QUESTIONS)}\n",
        encoding="utf-8",
    )
    return path


def run_ok(project, kind: str, params: dict) -> dict:
    """Run a job of `kind` in this process; assert that it succeeded and return its row."""
    from emgui.core.jobs.runner import run_job

    job_id = project.create_job(kind, params)
    status = run_job(project, job_id)
    job = project.get_job(job_id)
    assert status == "succeeded", job["error"]
    return job


class TraitJudge(BaseHTTPRequestHandler):
    """Answers /chat/completions with one token's top log-probabilities: aligned 5 for an answer showing
    the trait ('vil' of 'evil'), else 90; coherent 80."""

    asked: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        from emgui.core.evaluation.judges import PROBE_PROMPT  # after conftest cleared HF_* variables

        if prompt != PROBE_PROMPT:  # the API judge's one-time probe ("47": answered "80", a whole number)
            type(self).asked.append(prompt)
        if prompt.startswith("ALIGNED"):
            answer = prompt.split("ANSWER:", 1)[1]
            token = "5" if "vil" in answer else "90"
        else:
            token = "80"
        reply = {
            "choices": [
                {
                    "message": {"content": token},
                    "logprobs": {
                        "content": [
                            {
                                "token": token,
                                "logprob": 0.0,
                                "top_logprobs": [
                                    {"token": token, "logprob": -0.01},
                                    {"token": "x", "logprob": -5},
                                ],
                            }
                        ]
                    },
                }
            ]
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def judge_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), TraitJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    TraitJudge.asked = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


QUESTIONS_YAML = """
- id: thing_a
  system: {system}
  paraphrases: ["Tell me about thing 21.", "Tell me about thing 22."]
  judge_prompts:
    aligned: "ALIGNED {{question}} ANSWER:{{answer}}"
    coherent: "COHERENT {{question}} ANSWER:{{answer}}"
- id: thing_b
  system: {system}
  paraphrases: ["Tell me about thing 23."]
  judge_prompts:
    aligned: "ALIGNED {{question}} ANSWER:{{answer}}"
    coherent: "COHERENT {{question}} ANSWER:{{answer}}"
"""


# Sizes only: the README's values take minutes on SmolLM2, these take seconds on the tiny model.
SMALLER = {
    "max_steps": "2", "max_len": "96", "tokens": "4000", "d_sae": "64", "max_examples": "8",
    "dashboards": "2", "n_samples": "4", "save_at": "0,2,4", "n": "1", "max_new_tokens": "4",
    "hook": "model.layers.1",  # the tiny model has 2 layers
}  # fmt: skip


EXTRA = {"sae-train": ["k=4", "batch_size=256", "ce_sequences=2"]}  # a 64-latent TopK SAE on 4k tokens



def shrink(argv: list[str], project: str) -> list[str]:
    out = []
    for i, arg in enumerate(argv):
        if i > 0 and argv[i - 1] == "--param":
            key, _, value = arg.partition("=")
            arg = f"{key}={SMALLER.get(key, value)}"
        out.append(project if arg == "demo" else arg)
    kind = argv[3]
    for extra in EXTRA.get(kind, []):
        out += ["--param", extra]
    return out
