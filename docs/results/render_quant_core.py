"""Render docs/results/quant-core-smollm2.jsonl (one JSON line per `slim2gguf eval` row) as a markdown table."""
import json
import sys

rows = [json.loads(l) for l in open(sys.argv[1] if len(sys.argv) > 1 else "docs/results/quant-core-smollm2.jsonl")]
NAMES = {"fp": "fp32 (dequantized Q4_1 source)", "rtn2": "RTN", "rtn3": "RTN", "gptq2": "GPTQ", "gptq3": "GPTQ",
         "slim2": "SliM (SBA + SQC)", "slim3": "SliM (SBA + SQC)", "slim2-sba": "SliM, SBA only",
         "slim3-sba": "SliM, SBA only", "slim2-sqc": "SliM, SQC only", "slim3-sqc": "SliM, SQC only"}
order = ["fp", "rtn2", "gptq2", "slim2-sba", "slim2-sqc", "slim2", "rtn3", "gptq3", "slim3-sba", "slim3-sqc", "slim3"]
by = {r["row"]: r for r in rows}
print("| row | method | bits | avg code bits | bpw (codes + fp16 d, m) | PPL | quantize s | total s | peak RSS MiB |")
print("|---|---|---|---|---|---|---|---|---|")
for k in order:
    if k not in by:
        print(f"| {k} | {NAMES[k]} | {next((c for c in k if c.isdigit()), '-')} | | | not measured (time) | | | |")
        continue
    r = by[k]
    print(f"| {k} | {NAMES[k]} | {r['bits'] or '-'} | {r['avg_bits']:.2f} | {r['bpw']:.4f} | **{r['ppl']:.2f}** | "
          f"{r['quant_seconds']:.0f} | {r['seconds']:.0f} | {r['peak_rss_mib']:.0f} |")
