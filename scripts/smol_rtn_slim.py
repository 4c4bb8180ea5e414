"""Stand-in SmolLM2 SLIM files for the GPU-vs-CPU check when `slim2gguf convert` output is not at hand:
round-to-nearest of an F16 GGUF's linear weights into SLIM rows (g128 where the input width allows, else g64)
with an SBA-shaped bit map from a weight-only salience proxy (sum of w^2 per column group: the quarter of the
groups with the most get b+1 bits, the quarter with the least b-1), token_embd as Q4_0 and the output tied to it
(SmolLM2 ties them), so a file fits the device tool's 64 MiB carry. No calibration, no GPTQ: the perplexity is that
of RTN, the point is that GPU and CPU give the same number on real-model tags and shapes.

    python scripts/smol_rtn_slim.py F16.gguf OUT.gguf --bits 2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LINEAR = ("attn_qkv", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def rtn_slim(w: np.ndarray, st) -> np.ndarray:
    """RTN SLIM rows with SBA's shape over a weight-only salience proxy: groups ordered by sum of w^2, the top
    quarter at b+1 bits, the bottom quarter at b-1 (quant.sba.candidate_bits, as SBA builds its candidates)."""
    import torch

    from quant.sba import candidate_bits
    from slim2gguf.rtn_rows import rtn_rows

    rows, cols = w.shape
    G = cols // st.group_size
    sal = torch.from_numpy((w.astype(np.float32).reshape(rows, G, st.group_size) ** 2).sum(axis=(0, 2)))
    bits = candidate_bits(torch.argsort(sal, descending=True, stable=True), G // 4, st.avg_bits)
    return rtn_rows(w, st, bits.numpy())


def main() -> None:
    import gguf
    from slim2gguf.format import slim_type

    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--bits", type=int, choices=(2, 3), required=True)
    args = ap.parse_args()

    r = gguf.GGUFReader(args.src)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(args.out, arch)
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name in ("general.architecture", "general.file_type"):
            continue
        vtype = f.types[0]
        w.add_key_value(f.name, f.contents(), vtype, sub_type=f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_SLIM2 if args.bits == 2 else gguf.LlamaFileType.MOSTLY_SLIM3))
    w.add_string("slim.note", "RTN stand-in (scripts/smol_rtn_slim.py): weight-norm bit map, no calibration/GPTQ")
    names = {t.name for t in r.tensors}
    for t in r.tensors:
        data = np.asarray(t.data)
        name = t.name
        if name == "output.weight":
            if "token_embd.weight" in names:
                continue  # tied to token_embd
            name = "token_embd.weight"  # a file that kept only the (tied) output matrix
        if name == "token_embd.weight":
            w.add_tensor(name, gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q4_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q4_0)
        elif any(t.name.endswith(f".{n}.weight") for n in LINEAR):
            cols = int(t.shape[0])
            st = slim_type(args.bits, 128 if cols % 128 == 0 else 64)
            w.add_tensor(t.name, rtn_slim(data, st), raw_dtype=st.ggml_type)
        else:
            w.add_tensor(t.name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{args.out}: {Path(args.out).stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
