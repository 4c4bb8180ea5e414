#!/usr/bin/env python3
"""Accuracy report: perplexity against bits per weight, SLIM against llama.cpp's own types.

Every file is measured by the patched `llama-perplexity` on the same text, context and chunk count: PPL, and
against the F16 file's token distributions (`--kl-divergence-base` once on the F16 file, then
`--kl-divergence` per file) the mean KL divergence and how often the top-1 token is the same. The steps:

  F16 GGUF of the (dequantized) source  -- llama.cpp's own converter (slim2gguf.gguf_out.write_stock), or for
                                           a named model (--model qwen2.5-coder-1.5b) the F16 its fetch script
                                           made (scripts/fetch_qwen.py --f16)
  imatrix                               -- the patched llama-imatrix on the calibration text (the same text
                                           SLIM calibrates on), cached in the workdir with its settings
  stock types                           -- llama-quantize, with and without the imatrix; the types it really
                                           wrote are read back from the file (K/IQ types fall back on widths
                                           they cannot hold). The IQ2/IQ1 types refuse without an imatrix:
                                           the row says so
  RTN, GPTQ, SliM (SBA only, SQC only, both) at 2 and 3 bits  -- slim2gguf convert
  --target-bpw X / --match TYPE ...     -- slim2gguf convert --target-bpw: at X, or at each named stock+imatrix
                                           row's bpw (the whole-file bit budget against llama.cpp's mixes)
  --slim LABEL=FILE.gguf                -- any slim2gguf file made elsewhere, measured as it is
  --keep-rows                           -- rows already in <tag>.json with the same settings are kept, not
                                           made again (a fresh checkout has no workdir cache)

Output (in --out, default docs/results/): <tag>.md (table + settings), <tag>.json (everything measured),
<tag>.png (PPL and KLD against bpw, Pareto front), rewritten after every row. Intermediate files go to
--workdir and are reused when present (delete it to start over); each measurement is cached there per file
and settings.

    .venv/bin/python scripts/report.py                      # SmolLM2-135M demo, the full set
    .venv/bin/python scripts/report.py --model qwen2.5-coder-1.5b --chunks 16 --variants \
        --slim "SliM 2-bit=qwen-slim2.gguf"                 # the 1.5B model: stock types + a SLIM file
    .venv/bin/python scripts/report.py --model DIR --quick  # a handful of rows (the test uses this)
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from slim2gguf.errors import SlimError, run_cli  # noqa: E402
from slim2gguf.llama_build import tool_path  # noqa: E402

DATA = REPO.parent / "shared" / "data"
DEFAULT_CALIB = DATA / "brown.txt"
DEFAULT_EVAL = DATA / "austen" / "pride_and_prejudice.txt"

# llama-quantize types around the 2-4 bpw region, plus anchors. Each is made without and with the imatrix,
# except the ones llama-quantize refuses to make without one (it says so; the row records it).
STOCK_TYPES = ["Q8_0", "Q4_K_M", "Q4_0", "IQ4_XS", "Q3_K_M", "Q3_K_S", "IQ3_XXS", "Q2_K", "IQ2_M", "IQ2_S",
               "IQ2_XS", "IQ2_XXS", "Q2_0"]
ANCHOR_TYPES = {"Q8_0"}  # high-bit anchors: an imatrix changes next to nothing, made once
QUICK_STOCK_TYPES = ["Q8_0", "Q4_0", "Q2_K"]
# llama-quantize stops on these without an imatrix ("ERROR: this quantization requires an importance matrix!",
# src/llama-quant.cpp): their no-imatrix rows are made last, and the row records the refusal (cached as .refused)
NOT_CACHED = "not measured yet (--cached-only: made from the cache alone)"
REFUSED_WITHOUT_IMATRIX = {"IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M"}

# models with their own F16 reference and stock-type list (issue 12: a model on which llama.cpp's 2-bit types
# are real, every width a multiple of 256); the F16 is made by scripts/fetch_qwen.py --f16
MODELS_DIR = REPO / ".cache" / "models"
NAMED_MODELS = {
    "qwen2.5-coder-1.5b": {
        "f16": MODELS_DIR / "qwen2.5-coder-1.5b-instruct-f16.gguf",
        "stock_types": ["IQ2_XXS", "IQ2_XS", "Q2_K", "IQ2_S", "IQ2_M", "Q3_K_S", "Q4_0"],
        "fetch": "scripts/fetch_qwen.py --f16",
    },
}
MODEL_ALIASES = {"qwen": "qwen2.5-coder-1.5b", "qwen-1.5b": "qwen2.5-coder-1.5b",
                 "qwen2.5-coder-1.5b-instruct": "qwen2.5-coder-1.5b"}

# key -> (label, slim2gguf convert arguments)
SLIM_VARIANTS = {
    "rtn": ("RTN {b}-bit", ["--method", "rtn"]),
    "gptq": ("GPTQ {b}-bit", ["--method", "gptq"]),
    "slim": ("SliM {b}-bit", ["--method", "slim"]),
    "sba": ("SliM {b}-bit SBA only", ["--method", "slim", "--no-sqc"]),
    "sqc": ("SliM {b}-bit SQC only", ["--method", "slim", "--no-sba"]),
    "plain": ("SliM {b}-bit without SBA and SQC (GPTQ + weighted fit)", ["--method", "slim", "--no-sba", "--no-sqc"]),
    # one SBA bit map for q/k/v together, so every layer's q/k/v fuse on the GPU (its accuracy cost)
    "joint": ("SliM {b}-bit, one q/k/v bit map (--joint-qkv)", ["--method", "slim", "--joint-qkv"]),
    # the 2-bit levers of issue 12, each alone against the default (weighted fit) and all together
    "minmax": ("SliM {b}-bit, min/max + SQC fit (SliM before the levers)", ["--method", "slim", "--fit", "minmax"]),
    "obs": ("SliM {b}-bit, weighted fit with the OBS weight", ["--method", "slim", "--importance", "obs"]),
    "actorder": ("SliM {b}-bit + act-order", ["--method", "slim", "--act-order"]),
    "trueseq": ("SliM {b}-bit + true-sequential", ["--method", "slim", "--true-sequential"]),
    "levers": ("SliM {b}-bit, all levers", ["--method", "slim", "--act-order", "--true-sequential"]),
    # SmolLM2's tied embedding is a fifth of its weights: the same SliM blocks with a 4-bit embedding show what
    # the embedding's type costs on the whole-file axis (2-bit only, to keep the report's run time down)
    "embd": ("SliM {b}-bit, embd Q4_0", ["--method", "slim", "--embd-type", "q4_0", "--output-type", "q4_0"]),
    # issue 14: block-wise training (SliM+, its defaults), and end-to-end scale training after either
    # (labels that differ by more than a '+': the workdir's file names drop punctuation)
    "slimplus": ("SliM+ (block-wise training) {b}-bit", ["--method", "slim+"]),
    # (all windows trained, as in the committed Qwen rows: --tune-heldout came after them)
    "tune": ("SliM {b}-bit + tune 2 epochs", ["--method", "slim", "--tune-epochs", "2", "--tune-heldout", "0"]),
    "slimplus_tune": ("SliM+ (block-wise training) {b}-bit + tune 2 epochs",
                      ["--method", "slim+", "--tune-epochs", "2", "--tune-heldout", "0"]),
}
EMBD_VARIANT_BITS = {2}
QUICK_SLIM_VARIANTS = ["rtn", "slim"]


@dataclass
class Row:
    label: str
    family: str              # f16 | stock | stock+imatrix | slim
    file: str
    file_bytes: int = 0
    bpw: float = 0.0         # whole file, tensor bpw (slim2gguf.bpw): 8 * tensor bytes / parameters
    blk_bpw: float = 0.0     # 2-D weights of the transformer blocks only (what the quantizers differ in)
    types: dict = field(default_factory=dict)  # ggml type -> parameter count, as written
    ppl: float | None = None
    ppl_err: float | None = None
    kld: float | None = None
    same_top: float | None = None
    note: str = ""


def drop_if_settings_changed(out: Path, key_file: Path, key: dict) -> bool:
    """A cached file made under other settings than `key` (recorded in key_file when it was made) is deleted, so it
    is made again; one from before settings were recorded (no key_file) is kept. True when it was deleted."""
    if out.exists() and key_file.exists() and json.loads(key_file.read_text()) != key:
        out.unlink()
        return True
    return False


def slug(label: str) -> str:
    """A row's label as a file-name stem in the workdir."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


@dataclass
class SlimJob:
    """One slim2gguf row to make: convert at `bits` with `extra` arguments; budget: a --target-bpw file (it
    shares the measured plan)."""
    label: str
    bits: int
    extra: list
    budget: bool = False

    @property
    def tag(self) -> str:
        return slug(self.label)


BUDGET_LABELS = ("SliM --target-bpw", "SliM at ")   # rows made with convert --target-bpw (--target-bpw, --match)


def is_budget_row(r: "Row") -> bool:
    return r.family == "slim" and r.label.startswith(BUDGET_LABELS)


def run(cmd: list, log: Path, env: dict | None = None) -> str:
    """Run a tool, its whole output going to `log` as it comes (a long conversion can be watched there); raise
    one line on failure."""
    cmd = [str(c) for c in cmd]
    t0 = time.time()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        res = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})
        f.write(f"\n[report] {time.time() - t0:.0f} s\n")
    out = log.read_text(errors="replace").split("\n", 1)[1]
    if res.returncode != 0:
        tail = [ln for ln in out.strip().splitlines() if ln.strip() and not ln.startswith("[report]")][-1:]
        raise SlimError(f"{Path(cmd[0]).name} failed (exit {res.returncode}): {(tail or ['(no output)'])[0][:200]} "
                        f"[log: {log}]")
    return out


def measure_file(path: Path) -> tuple[int, float, float, dict]:
    """(bytes, whole-file tensor bpw, transformer-block 2-D weight bpw, {type: params}) read from the GGUF,
    by slim2gguf.bpw's definitions. Every SLIM tensor is validated first: a corrupt file is a one-line SlimError."""
    from slim2gguf import bpw, reference_decoder
    from slim2gguf.format import is_slim
    from slim2gguf.gguf_in import open_gguf

    reader = open_gguf(path)
    for tensor in reader.tensors:
        if is_slim(tensor.tensor_type):
            reference_decoder.validate(tensor.data, int(tensor.shape[0]), int(tensor.tensor_type), tensor.name)
    t = bpw.measure(reader, path.stat().st_size)
    return t.file_bytes, t.bpw_tensors, t.bpw_blocks, t.weights_by_type


def stock_tag(spec: str, with_imatrix: bool) -> str:
    qtype, _, embd = spec.partition(":")
    return qtype.lower() + (f"-embd-{embd.lower()}" if embd else "") + ("-imat" if with_imatrix else "")


def parse_perplexity(out: str) -> dict:
    res = {}
    if m := re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", out):
        res["ppl"], res["ppl_err"] = float(m.group(1)), float(m.group(2))
    if m := re.search(r"Mean PPL\(Q\)\s*:\s*([\d.]+)\s*±\s*([\d.]+)", out):
        res["ppl"], res["ppl_err"] = float(m.group(1)), float(m.group(2))
    if m := re.search(r"Mean\s+KLD:\s*([-\d.]+)", out):
        res["kld"] = float(m.group(1))
    if m := re.search(r"Same top p:\s*([\d.]+)", out):
        res["same_top"] = float(m.group(1))
    if m := re.search(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+)", out):
        res["chunks"], res["n_ctx"] = int(m.group(1)), int(m.group(2))
    if "ppl" not in res:
        raise SlimError("llama-perplexity printed no perplexity")
    return res


class Report:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.workdir)
        self.work.mkdir(parents=True, exist_ok=True)
        self.logs = self.work / "logs"
        self.logs.mkdir(exist_ok=True)
        self.threads = str(args.threads or os.cpu_count() or 2)
        self.rows: list[Row] = []
        self.kld_base = self.work / "f16.kld"
        self.eval_info: dict = {}
        self.timings: dict = {}   # tag -> seconds of the last real (uncached) make/measure
        self.kept = self.rows_to_keep() if args.keep_rows else {}

    def rows_to_keep(self) -> dict[str, Row]:
        """--keep-rows: the rows of this tag's existing JSON measured with the same text, context, chunks and
        calibration (a fresh checkout has no workdir cache; these rows are not made or measured again)."""
        js = Path(self.args.out) / f"{self.args.tag}.json"
        if not js.is_file():
            return {}
        old = json.loads(js.read_text())
        st = old["settings"]
        same = (st.get("ctx") == int(self.args.ctx) and st.get("calib_text") == Path(self.args.calib).name
                and st.get("eval_text", "").endswith(Path(self.args.eval_text).name)
                and st.get("slim_calibration") == f"{self.args.nsamples} x {self.args.seqlen} tokens")
        if not same:
            return {}
        kept = {}
        for r in old["rows"]:
            if r.get("ppl") is None or r["family"] == "f16":
                continue
            row = Row(**r)
            if "kept from" not in row.note:
                row.note = (row.note + "; " if row.note else "") + f"kept from the {st['date'][:10]} run " \
                    f"({st.get('slim2gguf_commit', '?')}, {st.get('chunks')} chunks)"
            kept[row.label] = row
        return kept

    def keep(self, label: str) -> bool:
        """Use the kept row for `label` (if any) instead of making and measuring it."""
        row = self.kept.get(label)
        if row is None:
            return False
        self.rows.append(row)
        self.write()
        print(f"[report] {label:32s} kept ({row.note})", flush=True)
        return True

    # -- files ---------------------------------------------------------------------------------------------
    def tool(self, name: str) -> Path:
        return Path(self.args.bin) / name if self.args.bin else tool_path(name)

    def f16(self) -> Path:
        named = NAMED_MODELS.get(self.args.model)
        if named:
            if not named["f16"].is_file():
                raise SlimError(f"{named['f16']} not found: make it with .venv/bin/python {named['fetch']}")
            return named["f16"]
        out = self.work / "f16.gguf"
        if not out.exists():
            from slim2gguf import gguf_out, hf_export, model_io

            print("[report] F16 GGUF of the source model", flush=True)
            model, tok, _ = model_io.load_model(self.args.model)
            hf_dir = hf_export.export_hf_folder(model, tok, self.work / "hf")
            gguf_out.write_stock(hf_dir, out, "f16")
            shutil.rmtree(self.work / "hf", ignore_errors=True)
        return out

    def imatrix(self, f16: Path) -> Path:
        """llama-imatrix on the calibration text, cached with its settings (a file from before the settings were
        recorded is kept)."""
        out = self.work / "imatrix.gguf"
        key_file = self.work / "imatrix.key.json"
        key = {"f16": [str(f16), f16.stat().st_size], "calib": [str(Path(self.args.calib).resolve()),
               Path(self.args.calib).stat().st_size], "ctx": int(self.args.ctx),
               "chunks": int(self.args.imatrix_chunks)}
        drop_if_settings_changed(out, key_file, key)
        if not out.exists() and self.args.cached_only:
            raise SlimError(NOT_CACHED)
        if not out.exists():
            print("[report] imatrix on the calibration text", flush=True)
            t0 = time.time()
            tmp = self.work / "imatrix.tmp.gguf"
            run([self.tool("llama-imatrix"), "-m", f16, "-f", self.args.calib, "-o", tmp, "-c", self.args.ctx,
                 "--chunks", self.args.imatrix_chunks, "-t", self.threads, "--no-ppl"], self.logs / "imatrix.log")
            tmp.rename(out)
            key_file.write_text(json.dumps(key))
            self.timings["imatrix"] = round(time.time() - t0)
        return out

    def stock(self, f16: Path, spec: str, imatrix: Path | None) -> Path:
        """llama-quantize to SPEC: a type (IQ2_XXS), or TYPE:EMBD (IQ2_XXS:Q8_0) for token_embd and output in
        EMBD instead of the type's own choice (to compare with a SLIM file at the same embedding/output types)."""
        qtype, _, embd = spec.partition(":")
        tag = stock_tag(spec, imatrix is not None)
        out = self.work / f"{tag}.gguf"
        refused = self.work / f"{tag}.refused"   # a refusal is cached too: it is the row's result
        if not out.exists() and refused.exists():
            raise SlimError(refused.read_text().strip())
        if not out.exists() and self.args.cached_only:
            raise SlimError(NOT_CACHED)
        if not out.exists():
            cmd = [self.tool("llama-quantize")]
            if imatrix:
                cmd += ["--imatrix", imatrix]
            if embd:
                cmd += ["--token-embedding-type", embd, "--output-tensor-type", embd]
            cmd += [f16, out.with_suffix(".tmp"), qtype, self.threads]
            t0 = time.time()
            try:
                run(cmd, self.logs / f"quantize-{tag}.log")
            except SlimError as e:
                out.with_suffix(".tmp").unlink(missing_ok=True)
                log = (self.logs / f"quantize-{tag}.log").read_text()
                if m := re.search(r"Missing importance matrix for tensor (\S+)|requires an importance matrix!\s*"
                                  r"- offending tensor: (\S+)", log):
                    why = (f"llama-quantize refuses without an imatrix (at {m.group(1) or m.group(2)}: "
                           "'this quantization requires an importance matrix')")
                    refused.write_text(why + "\n")
                    raise SlimError(why) from e
                raise
            out.with_suffix(".tmp").rename(out)
            self.timings[f"quantize-{tag}"] = round(time.time() - t0)
        return out

    def slim(self, bits: int, extra: list[str], tag: str, env: dict | None = None) -> Path:
        """`slim2gguf convert` for one row, cached with its settings like the imatrix (a file from before the
        settings were recorded is kept): a changed --nsamples, --seqlen, calibration text or variant makes it again."""
        out = self.work / f"{tag}.gguf"
        source = NAMED_MODELS[self.args.model]["f16"] if self.args.model in NAMED_MODELS else self.args.model
        key_file = self.work / f"{tag}.key.json"
        calib = Path(self.args.calib)
        key = {"source": str(source), "bits": int(bits), "calib": [str(calib.resolve()), calib.stat().st_size],
               "nsamples": int(self.args.nsamples), "seqlen": int(self.args.seqlen), "extra": [str(e) for e in extra]}
        if drop_if_settings_changed(out, key_file, key):
            print(f"[report] {tag}: settings changed, converting again", flush=True)
        if not out.exists() and self.args.cached_only:
            raise SlimError(NOT_CACHED)
        if not out.exists():
            cmd = [sys.executable, "-m", "slim2gguf.cli", "convert", source, "--bits", bits, "-o", out,
                   "--calib", self.args.calib, "--nsamples", self.args.nsamples, "--seqlen", self.args.seqlen,
                   *extra]
            t0 = time.time()
            run(cmd, self.logs / f"convert-{tag}.log", env)
            key_file.write_text(json.dumps(key))
            self.timings[f"convert-{tag}"] = round(time.time() - t0)
        return out

    # -- measuring -----------------------------------------------------------------------------------------
    def perplexity(self, path: Path, tag: str, base: bool = False) -> dict:
        cmd = [self.tool("llama-perplexity"), "-m", path, "-f", self.args.eval_text, "-c", self.args.ctx,
               "--chunks", self.args.chunks, "-t", self.threads, "-b", self.args.ctx]
        if base:
            cmd += ["--kl-divergence-base", self.kld_base]
        else:
            cmd += ["--kl-divergence-base", self.kld_base, "--kl-divergence"]
        # measurements are cached next to the file; the key changes when the file or the settings do, and a
        # KLD measured before the F16 logits were (re)made is stale
        key = [path.stat().st_size, path.stat().st_mtime_ns, [str(c) for c in cmd[2:]]]
        cache = self.work / f"{tag}.ppl.json"
        fresh = cache.exists() and json.loads(cache.read_text())["key"] == key and self.kld_base.exists()
        if fresh and not base:
            fresh = cache.stat().st_mtime_ns >= self.kld_base.stat().st_mtime_ns
        if fresh:
            res = json.loads(cache.read_text())["result"]
        elif self.args.cached_only:
            raise SlimError(NOT_CACHED)
        else:
            t0 = time.time()
            res = parse_perplexity(run(cmd, self.logs / f"perplexity-{tag}.log"))
            if not base and "kld" not in res:
                raise SlimError(f"llama-perplexity printed no KLD for {path.name} [log: {self.logs}]")
            cache.write_text(json.dumps({"key": key, "result": res}))
            self.timings[f"perplexity-{tag}"] = round(time.time() - t0)
        for k in ("chunks", "n_ctx"):
            if k in res:
                self.eval_info[k] = res[k]
        return res

    def add(self, label: str, family: str, path: Path, tag: str, base: bool = False, note: str = "") -> None:
        t0 = time.time()
        row = Row(label, family, path.name, note=note)
        row.file_bytes, row.bpw, row.blk_bpw, row.types = measure_file(path)
        try:
            measured = self.perplexity(path, tag, base)
        except SlimError as e:
            if base:
                raise
            self.failed(label, family, str(e))
            return
        for k, v in measured.items():
            if hasattr(row, k):
                setattr(row, k, v)
        self.rows.append(row)
        self.write()
        kld = f"{row.kld:.4f}" if row.kld is not None else "-"
        print(f"[report] {label:32s} bpw {row.bpw:6.3f} (blk {row.blk_bpw:6.3f})  PPL {row.ppl:10.4f}  "
              f"KLD {kld}  ({time.time() - t0:.0f} s)", flush=True)

    def failed(self, label: str, family: str, why: str) -> None:
        note = why if why == NOT_CACHED else f"not made: {why}"
        self.rows.append(Row(label, family, "", note=note))
        self.write()
        print(f"[report] {label:32s} {note}", flush=True)

    def run_all(self) -> None:
        a = self.args
        f16 = self.f16()
        self.add("F16", "f16", f16, "f16", base=True, note="dequantized source")
        named = NAMED_MODELS.get(a.model, {})
        stock_types = a.stock_types if a.stock_types is not None else (
            QUICK_STOCK_TYPES if a.quick else named.get("stock_types", STOCK_TYPES))
        # with the imatrix first (the fair baselines), then without; the types that refuse without one last
        jobs = [(q, True) for q in stock_types if q not in ANCHOR_TYPES]
        jobs += [(q, False) for q in stock_types if q.partition(":")[0] not in REFUSED_WITHOUT_IMATRIX]
        jobs += [(q, False) for q in stock_types if q.partition(":")[0] in REFUSED_WITHOUT_IMATRIX]
        jobs = [j for j in jobs if a.imatrix == "both" or j[1] == (a.imatrix == "with")]
        imatrix: Path | None = None
        for qtype, with_imatrix in jobs:
            family = "stock+imatrix" if with_imatrix else "stock"
            base, _, embd = qtype.partition(":")
            label = base + (f", embd/output {embd}" if embd else "") + (" +imatrix" if with_imatrix else "")
            tag = stock_tag(qtype, with_imatrix)
            if self.keep(label):
                continue
            if with_imatrix and imatrix is None:
                try:
                    imatrix = self.imatrix(f16)
                except SlimError as e:
                    self.failed(label, family, f"no imatrix: {e}")
                    continue
            try:
                path = self.stock(f16, qtype, imatrix if with_imatrix else None)
            except SlimError as e:
                self.failed(label, family, str(e))
                continue
            self.add(label, family, path, tag)
        # issue 13: SLIM files made to a whole-file budget, at given bpw and at each stock+imatrix row's bpw
        targets = [(x, f"{BUDGET_LABELS[0]} {x:.3f}") for x in (a.target_bpw or [])]
        if a.match:
            for r in [r for r in self.rows if r.family == "stock+imatrix" and r.ppl is not None]:
                if r.label.split()[0] in a.match or "all" in a.match:
                    targets.append((round(r.bpw, 3), f"{BUDGET_LABELS[1]}{r.label.split()[0]}+imatrix's bpw ({r.bpw:.3f})"))
        jobs = [SlimJob(label, 2, ["--target-bpw", f"{x:.3f}", "--fisher-samples", str(a.fisher_samples)], True)
                for x, label in targets if not self.keep(label)]
        keys = a.variants if a.variants is not None else (QUICK_SLIM_VARIANTS if a.quick else list(SLIM_VARIANTS))
        for bits in a.bits:
            for key in keys:
                label, extra = SLIM_VARIANTS[key]
                if key == "embd" and bits not in EMBD_VARIANT_BITS:
                    continue
                label = label.format(b=bits)
                if not self.keep(label):
                    jobs.append(SlimJob(label, bits, extra))
        seen: dict[str, str] = {}
        for j in jobs:   # the workdir names files by tag: two rows on one name would overwrite each other's files
            if seen.setdefault(j.tag, j.label) != j.label:
                raise SlimError(f"rows '{seen[j.tag]}' and '{j.label}' would share the file name {j.tag}.gguf")
        self.slim_rows(jobs)
        for spec in a.slim or []:
            label, _, file = spec.rpartition("=")
            path = Path(file)
            label = label or path.stem
            tag = "file-" + slug(label)
            if not path.is_file() and self.keep(label):
                continue
            if not path.is_file():
                self.failed(label, "slim", f"{path} not found")
                continue
            self.add(label, "slim", path, tag, note=path.name)

    def slim_rows(self, jobs: list["SlimJob"]) -> None:
        """Make and measure the slim2gguf rows. The budget rows (--target-bpw, --match) share one measuring pass:
        the first measures and saves the plan (convert --save-plan), the others allocate its measured losses at
        their own target (convert --plan P --target-bpw X). With --jobs N the files are converted N at a time
        once the plan exists (a GPU machine: each process leaves the GPU mostly idle), each with cpu_count / N
        threads, and every row is measured as soon as its file is made."""
        a = self.args
        plan = self.work / f"plan-{Path(a.calib).stem}-{a.nsamples}x{a.seqlen}-f{a.fisher_samples}.json"

        def make(job: SlimJob, env: dict | None = None) -> Path:
            extra = list(job.extra)
            if job.budget:
                extra += ["--plan", plan] if plan.exists() else ["--save-plan", plan]
            return self.slim(job.bits, extra, job.tag, env)

        def finish(job: SlimJob, made) -> None:
            try:
                path = made()
            except SlimError as e:
                self.failed(job.label, "slim", str(e))
                return
            self.add(job.label, "slim", path, job.tag, note=a.row_note)

        pending = list(jobs)
        while any(j.budget for j in pending) and not plan.exists():   # one at a time until a plan is saved
            job = next(j for j in pending if j.budget)
            pending.remove(job)
            finish(job, lambda: make(job))
        if a.jobs > 1 and len(pending) > 1:
            from concurrent.futures import ThreadPoolExecutor, as_completed
            env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // a.jobs))}
            with ThreadPoolExecutor(a.jobs) as pool:
                futures = {pool.submit(make, j, env): j for j in pending}
                for f in as_completed(futures):
                    finish(futures[f], f.result)
        else:
            for job in pending:
                finish(job, lambda: make(job))

    # -- output --------------------------------------------------------------------------------------------
    def settings(self) -> dict:
        import gguf
        import torch

        # the GPU machine's copy of .git can be stale: device scripts pass the commit they packed
        commit = os.environ.get("SLIM2GGUF_COMMIT") or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        return {
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "model": self.args.model + (f" (F16: {NAMED_MODELS[self.args.model]['f16'].name})"
                                        if self.args.model in NAMED_MODELS else ""),
            "eval_text": str(Path(self.args.eval_text).resolve().relative_to(REPO.parent))
            if str(Path(self.args.eval_text).resolve()).startswith(str(REPO.parent)) else str(self.args.eval_text),
            "calib_text": str(Path(self.args.calib).name),
            "ctx": int(self.args.ctx),
            "chunks": self.eval_info.get("chunks"),
            "eval_tokens": (self.eval_info.get("chunks") or 0) * int(self.args.ctx),
            # llama-perplexity scores the second half of each window (the first half is context)
            "scored_tokens": (self.eval_info.get("chunks") or 0) * (int(self.args.ctx) // 2),
            "slim_calibration": f"{self.args.nsamples} x {self.args.seqlen} tokens",
            "imatrix_chunks": int(self.args.imatrix_chunks),
            "threads": int(self.threads),
            "tool": "llama-perplexity (patched llama.cpp of llama-cpp-python 0.3.36), CPU",
            "slim2gguf_commit": commit or "unknown",
            "torch": torch.__version__,
            "gguf_py": getattr(gguf, "__version__", "0.19.0 (vendored, patched)"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        }

    def pareto(self) -> set[str]:
        """Labels on the front: no other row has lower-or-equal bpw and lower PPL."""
        rows = [r for r in self.rows if r.ppl is not None]
        front = set()
        for r in rows:
            if not any(o is not r and o.bpw <= r.bpw and o.ppl < r.ppl for o in rows):
                front.add(r.label)
        return front

    def write(self, settings: dict | None = None) -> tuple[Path, Path, Path]:
        """The table, JSON and plot of self.rows; `settings` for the table's header (default: this run's)."""
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        settings = settings or self.settings()
        f16 = next((r for r in self.rows if r.family == "f16" and r.ppl), None)
        front = self.pareto()
        lines = [f"# Perplexity against bits per weight: {self.args.tag}", "",
                 "Made by `scripts/report.py`; every row measured by the same `llama-perplexity` run settings.", "",
                 "| setting | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in settings.items()]
        lines += ["", "bpw: 8 × tensor bytes / parameters, read from the file (whole file, and the 2-D weights "
                  "of the transformer blocks alone). KLD: mean KL divergence to the F16 file's next-token "
                  "distribution. ★: on the Pareto front (no row with lower-or-equal bpw has lower PPL).", "",
                  "| type | family | bpw (file) | bpw (blocks) | size (MiB) | PPL | PPL / F16 | KLD | same top-1 % "
                  "| types written | note |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(self.rows, key=lambda r: (r.ppl is None, -r.bpw)):
            if r.ppl is None:
                lines.append(f"| {r.label} | {r.family} | | | | | | | | | {r.note} |")
                continue
            ratio = f"{r.ppl / f16.ppl:.3f}" if f16 else ""
            kld = f"{r.kld:.4f}" if r.kld is not None else ""
            top = f"{r.same_top:.2f}" if r.same_top is not None else ""
            total = sum(r.types.values())
            types = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(r.types.items(), key=lambda kv: -kv[1]))
            star = " ★" if r.label in front else ""
            lines.append(f"| {r.label}{star} | {r.family} | {r.bpw:.3f} | {r.blk_bpw:.3f} | "
                         f"{r.file_bytes / 2**20:.1f} | {r.ppl:.3f} ± {r.ppl_err:.3f} | {ratio} | {kld} | {top} | "
                         f"{types} | {r.note} |")
        md = out / f"{self.args.tag}.md"
        md.write_text("\n".join(lines) + "\n")
        js = out / f"{self.args.tag}.json"
        js.write_text(json.dumps({"settings": settings, "rows": [asdict(r) for r in self.rows],
                                  "pareto": sorted(front), "timings_s": self.timings}, indent=1))
        png = out / f"{self.args.tag}.png"
        self.plot(png, front, f16)
        return md, js, png

    def plot(self, png: Path, front: set[str], f16: Row | None) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        styles = {"stock": ("o", "tab:blue", "llama-quantize"), "stock+imatrix": ("s", "tab:green",
                  "llama-quantize + imatrix"), "slim": ("D", "tab:red", "slim2gguf (RTN/GPTQ/SliM)"),
                  "f16": ("*", "black", "F16")}
        rows = [r for r in self.rows if r.ppl is not None]
        fig, axes = plt.subplots(1, 3, figsize=(20, 6))
        panels = ((axes[0], "bpw", "ppl", "bits per weight (whole file)", f"perplexity (ctx {self.args.ctx}, log)"),
                  (axes[1], "blk_bpw", "ppl", "bits per weight (transformer-block weights)",
                   f"perplexity (ctx {self.args.ctx}, log)"),
                  (axes[2], "bpw", "kld", "bits per weight (whole file)", "mean KLD to F16 (log)"))
        for ax, xattr, yattr, xlabel, ylabel in panels:
            for fam, (marker, color, name) in styles.items():
                pts = [r for r in rows if r.family == fam and getattr(r, yattr) is not None
                       and (yattr != "kld" or getattr(r, yattr) > 0)]
                if pts:
                    ax.scatter([getattr(r, xattr) for r in pts], [getattr(r, yattr) for r in pts], marker=marker,
                               color=color, label=name, zorder=3)
                    for r in pts:
                        ax.annotate(r.label, (getattr(r, xattr), getattr(r, yattr)), fontsize=6, xytext=(3, 3),
                                    textcoords="offset points")
            budget = sorted((r for r in rows if is_budget_row(r) and getattr(r, yattr) is not None),
                            key=lambda r: getattr(r, xattr))
            if budget:    # the whole-file bit budget (convert --target-bpw) as one curve
                ax.plot([getattr(r, xattr) for r in budget], [getattr(r, yattr) for r in budget], color="tab:red",
                        lw=1.5, label="slim2gguf --target-bpw", zorder=2)
            fr = sorted((r for r in rows if r.label in front), key=lambda r: r.bpw)
            if xattr == "bpw" and yattr == "ppl" and fr:
                ax.step([r.bpw for r in fr], [r.ppl for r in fr], where="post", color="gray", ls="--",
                        label="Pareto front", zorder=2)
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{self.args.tag}: perplexity and KL divergence to F16 against size "
                     f"({Path(self.args.eval_text).name}, {self.eval_info.get('chunks', '?')} × {self.args.ctx} tokens)")
        fig.tight_layout()
        fig.savefig(png, dpi=120)
        plt.close(fig)


def merge(args) -> int:
    """--merge: <out>/<tag>.json plus another run's rows (same label: the other run's wins), written again with
    the first run's settings; the other run's settings are kept under "merged_from"."""
    js = Path(args.out) / f"{args.tag}.json"
    if not js.is_file():
        raise SlimError(f"--merge: no {js} to merge into")
    if not Path(args.merge).is_file():
        raise SlimError(f"--merge: {args.merge} not found")
    base, other = json.loads(js.read_text()), json.loads(Path(args.merge).read_text())
    # rows measured differently do not belong in one table
    for k in ("ctx", "chunks", "eval_text", "calib_text", "slim_calibration"):
        if k in other["settings"] and other["settings"][k] != base["settings"].get(k):
            raise SlimError(f"--merge: {args.merge} has {k} {other['settings'][k]!r}, {js} "
                            f"{base['settings'].get(k)!r}")
    fields = set(Row.__dataclass_fields__)
    new = {r["label"]: {k: v for k, v in r.items() if k in fields} for r in other["rows"]}
    rows = [Row(**new.pop(r["label"], r)) for r in base["rows"]] + [Row(**r) for r in new.values()]
    rep = Report.__new__(Report)
    timings = {**base.get("timings_s", {}), **{k: v for k, v in other.get("timings_s", {}).items() if k != "total"}}
    rep.args, rep.rows, rep.timings = args, rows, timings
    args.ctx = base["settings"].get("ctx", args.ctx)
    rep.eval_info = {"chunks": base["settings"].get("chunks")}
    o = other["settings"]
    merged_from = base["settings"].get("merged_from", []) + [
        f"{len(other['rows'])} rows of {o.get('date')} (commit {o.get('slim2gguf_commit')}, torch {o.get('torch')}, "
        f"{o.get('machine')}; {', '.join(r['label'] for r in other['rows'])})"]
    md, js, png = rep.write({**{k: v for k, v in base["settings"].items() if k != "merged_from"},
                             "merged_from": merged_from})
    print(f"[report] merged {len(other['rows'])} rows of {args.merge}: wrote {md}, {js}, {png}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo",
                    help="HF folder, GGUF of higher precision, 'demo' (default, SmolLM2-135M) or "
                         f"{' / '.join(NAMED_MODELS)} (the F16 from its fetch script; alias 'qwen')")
    ap.add_argument("--tag", default=None, help="output file stem (default: smollm2-135m for the demo)")
    ap.add_argument("--out", default=str(REPO / "docs" / "results"), help="where the table and plot go")
    ap.add_argument("--workdir", default=None, help="intermediate files (default build/report/<tag>)")
    ap.add_argument("--calib", default=str(DEFAULT_CALIB), help="calibration text (SliM, GPTQ, imatrix)")
    ap.add_argument("--eval-text", default=str(DEFAULT_EVAL), help="evaluation text")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=32, help="evaluation chunks of --ctx tokens (default 32)")
    ap.add_argument("--imatrix-chunks", type=int, default=32)
    ap.add_argument("--nsamples", type=int, default=16, help="SliM/GPTQ calibration samples (default 16)")
    ap.add_argument("--seqlen", type=int, default=512, help="SliM/GPTQ calibration sample length")
    ap.add_argument("--bits", type=int, nargs="+", default=[2, 3], choices=(2, 3))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--stock-types", nargs="*", default=None, metavar="TYPE",
                    help=f"llama-quantize types (default: {' '.join(STOCK_TYPES)}); TYPE:EMBD also sets "
                         "token_embd and output to EMBD (IQ2_XXS:Q8_0)")
    ap.add_argument("--imatrix", choices=("both", "with", "without"), default="both",
                    help="stock types with the imatrix, without, or both (default)")
    ap.add_argument("--variants", nargs="*", default=None, choices=list(SLIM_VARIANTS),
                    help=f"slim2gguf rows (default: all of {' '.join(SLIM_VARIANTS)}; none when given empty)")
    ap.add_argument("--target-bpw", type=float, nargs="*", default=None, metavar="X",
                    help="also SLIM files made with convert --target-bpw X (tensor bpw)")
    ap.add_argument("--match", nargs="*", default=None, metavar="TYPE",
                    help="also a SLIM --target-bpw file at the bpw of each of these stock+imatrix rows ('all': every "
                         "one), side by side (issue 13)")
    ap.add_argument("--slim", action="append", default=None, metavar="[LABEL=]FILE.gguf",
                    help="also measure this slim2gguf file (made elsewhere) as a row; repeatable")
    ap.add_argument("--bin", default=None,
                    help="folder of the patched llama.cpp tools (default: build/cpu/bin); a copy keeps a long run "
                         "safe from rebuilds")
    ap.add_argument("--fisher-samples", type=int, default=8, help="convert --fisher-samples of the budget files")
    ap.add_argument("--jobs", type=int, default=1,
                    help="convert the SLIM files this many at a time (after the first budget file, which measures the "
                         "plan the others share); for a GPU machine")
    ap.add_argument("--row-note", default="", help="a note on every SLIM row made in this run (where it was made)")
    ap.add_argument("--keep-rows", action="store_true",
                    help="reuse the rows of the existing <out>/<tag>.json measured with the same settings instead of "
                         "making them again (the F16 reference is measured again for the KLD of new rows)")
    ap.add_argument("--quick", action="store_true", help="a few rows only (tests)")
    ap.add_argument("--cached-only", action="store_true",
                    help="make nothing, measure nothing: the table from the workdir's cache, the rest listed as "
                         "not measured yet (to write the table while, or after, a long run is stopped)")
    ap.add_argument("--merge", metavar="JSON", default=None,
                    help="make and measure nothing: add the rows of another run's JSON (e.g. one made on the GPU "
                         "machine) to <out>/<tag>.json, replacing rows of the same label, and write the table, JSON "
                         "and plot again")
    args = ap.parse_args(argv)
    args.model = MODEL_ALIASES.get(args.model, args.model)
    args.tag = args.tag or ("smollm2-135m" if args.model == "demo" else Path(args.model).name)
    args.workdir = args.workdir or str(REPO / "build" / "report" / args.tag)
    if args.merge:
        return merge(args)
    for p in (args.calib, args.eval_text):
        if not Path(p).is_file():
            raise SlimError(f"text file not found: {p}")
    t0 = time.time()
    rep = Report(args)
    rep.run_all()
    rep.timings["total"] = round(time.time() - t0)
    md, js, png = rep.write()
    print(f"[report] wrote {md}, {js}, {png} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
