"""SliM+ on the GPU machine: what block-wise training costs and buys (issue 14).

  smol   SmolLM2-135M (a GGUF given by --model): each configuration of --configs (JSON list of QuantConfig
         fields) quantized on CUDA with brown.txt calibration, then torch perplexity of the fake-quant model on
         pride_and_prejudice (the weights the file would hold): one JSON line per configuration with seconds,
         seconds per layer and peak GPU memory.
  shape  a LLaMA-7B-shaped random model (hidden 4096, FFN 11008, 32/32 heads, vocab 32000) with --layers
         decoder layers, calibration text tokenized by the LLaMA SPM vocab (--vocab, a llama.cpp vocab GGUF):
         seconds per layer and peak GPU memory of slim and slim+ (a 7B has 32 such layers).

    python scripts/gpu_slimplus.py smol --model SmolLM2.gguf --configs '[{"method": "slim+"}]'
    python scripts/gpu_slimplus.py shape --vocab ggml-vocab-llama-spm.gguf --layers 2
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from quant.blockwise import default_epochs  # noqa: E402
from quant.calibration import windows_from_ids  # noqa: E402
from quant.config import QuantConfig  # noqa: E402
from quant.perplexity import perplexity  # noqa: E402
from quant.pipeline import quantize_model  # noqa: E402
from slim2gguf.model_io import load_model, tokenize_file  # noqa: E402

DATA = ROOT.parent / "shared" / "data"   # --data where ../shared does not travel (the GPU machine)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run_config(model, calib, fields: dict, dev) -> dict:
    fields = dict(fields)
    if fields.get("method") == "slim+" and "epochs" not in fields:
        fields["epochs"] = default_epochs(dev)
    config = QuantConfig(**fields)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.time()
    res = quantize_model(model, calib, config, device=dev, progress=True)
    sec = time.time() - t
    n = len(model.model.layers)
    out = {"config": {k: v for k, v in config.key().items() if k in fields or k in ("epochs", "lr")},
           "seconds": round(sec, 1), "seconds_per_layer": round(sec / n, 2),
           "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if dev.type == "cuda" else None}
    tr = res.info.get("training")
    if tr:
        out["block_mse_before_after"] = [[round(v["loss_before"], 5), round(v["loss_after"], 5)]
                                         for v in tr.values()][:: max(1, n // 6)]
    return out


def cmd_smol(args) -> None:
    dev = device()
    configs = json.loads(args.configs)
    _, tok, _ = load_model(args.model)
    calib_ids = tokenize_file(tok, str(args.data / "brown.txt"))
    ev = tokenize_file(tok, str(args.data / "austen" / "pride_and_prejudice.txt"), args.eval_tokens)
    calib = windows_from_ids(calib_ids, args.nsamples, args.seqlen, 0, source="brown")
    for fields in configs:
        model, _, _ = load_model(args.model)
        out = run_config(model, calib, fields, dev)
        model.to(dev)
        out["ppl"] = round(perplexity(model, ev, ctx=512, progress=False)["ppl"], 2)
        out["eval_tokens"] = int(ev.numel())
        print(json.dumps(out), flush=True)


def llama7b_shaped(layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):   # fast random init, then to host
        model = LlamaForCausalLM(cfg)
    return model.float().cpu().eval()


def cmd_shape(args) -> None:
    dev = device()
    if args.calib_ids:     # windows tokenized elsewhere ("NxL" keys): the GGUF vocab's tokenizer is slow to build
        calib = torch.load(args.calib_ids)[f"{args.nsamples}x{args.seqlen}"]
    else:
        from transformers import AutoTokenizer
        vocab = Path(args.vocab)
        tok = AutoTokenizer.from_pretrained(str(vocab.parent), gguf_file=vocab.name)
        ids = tokenize_file(tok, str(args.data / "brown.txt"))
        calib = windows_from_ids(ids, args.nsamples, args.seqlen, 0, source="brown")
    for fields in json.loads(args.configs):
        model = llama7b_shaped(args.layers)
        out = run_config(model, calib, fields, dev)
        out.update(layers=args.layers, nsamples=args.nsamples, seqlen=args.seqlen,
                   gpu=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu")
        print(json.dumps(out), flush=True)
        del model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("smol")
    s.add_argument("--model", required=True)
    s.add_argument("--eval-tokens", type=int, default=8192)
    t = sub.add_parser("shape")
    t.add_argument("--vocab", help="llama.cpp vocab GGUF (LLaMA SPM) to tokenize brown.txt with")
    t.add_argument("--calib-ids", help="torch file {'NxL': LongTensor [N, L]} of calibration windows")
    t.add_argument("--layers", type=int, default=2)
    for p in (s, t):
        p.add_argument("--configs", default='[{"method": "slim"}, {"method": "slim+"}]')
        p.add_argument("--nsamples", type=int, default=32)
        p.add_argument("--seqlen", type=int, default=512)
        p.add_argument("--data", type=Path, default=DATA, help="folder with brown.txt and austen/")
    args = ap.parse_args()
    {"smol": cmd_smol, "shape": cmd_shape}[args.cmd](args)


if __name__ == "__main__":
    main()
