"""Turn a GGUF checkpoint into a plain Hugging Face folder (bf16 safetensors + tokenizer).

Run by ``kvgate model prepare`` with the *engine's* Python (it needs torch, transformers,
gguf and accelerate, which kvgate's own environment does not carry)::

    <engine python> convert_gguf.py GGUF_DIR GGUF_FILE OUT_DIR

transformers 5 keeps GGUF weights packed and then refuses ``save_pretrained`` ("quantized with
QuantizationMethod.GGUF and is not serializable"), so the weights are dequantized on load and
copied into a plain model built from the same config before saving. This file is never
imported by kvgate itself.
"""

from __future__ import annotations

import json
import os
import sys


def convert(gguf_dir: str, gguf_file: str, out_dir: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf_dir,
        gguf_file=gguf_file,
        dtype=torch.float32,
        quantization_config=GgufConfig(
            gguf_file=os.path.join(gguf_dir, gguf_file), dequantize=True
        ),
    )
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v.float() for k, v in quantized.state_dict().items()}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if "lm_head" not in k]  # tied embeddings
    if missing or result.unexpected_keys:
        raise SystemExit(
            f"weights do not fit: missing={missing} unexpected={result.unexpected_keys}"
        )
    model = model.to(torch.bfloat16)
    model.generation_config = quantized.generation_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    print(json.dumps({"params": sum(p.numel() for p in model.parameters()), "out": out_dir}))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit("usage: convert_gguf.py GGUF_DIR GGUF_FILE OUT_DIR")
    convert(sys.argv[1], sys.argv[2], sys.argv[3])
