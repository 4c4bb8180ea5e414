"""A conversion, start to end: MODEL (streamed, weights.py) -> calibration tokens -> quant.pipeline, one decoder
layer at a time (read from the source just before, dropped just after), each finished layer checkpointed to
OUT.ckpt/ -> llama.cpp's own converter writes OUT.partial with SLIM rows for the quantized linears (gguf_out),
reading the other tensors from the source one at a time -> renamed to OUT -> with tune_epochs, OUT's group
scales trained end to end (tune.py; the whole model twice in memory; a tuned copy renamed over OUT, the
checkpoints kept until then) -> summary measured from the file (convert_summary).

`resume` continues from OUT.ckpt/ after an interruption and gives a byte-identical file. The CLI front end is
cmd_convert; this module is the library entry point (`convert(ConvertSettings(...))`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quant.config import QuantConfig

from .calibration import CalibrationSpec, calibration_set, log_stderr
from .checkpoint import Checkpoints, StoredResults, checkpoint_dir, file_fingerprint, model_fingerprint
from .convert_summary import StageTimes, build_summary, format_summary
from .errors import SlimError
from .gguf_out import StockTypes, check_converter_vocab, check_writable, slim_metadata, write_slim_gguf_atomic

# suffixes of a GGUF source's stem that name its type: dropped from the default output name
_TYPE_SUFFIXES = (".F16", ".F32", ".BF16", ".Q8_0", ".Q4_1", ".Q4_0", ".Q5_0", ".Q5_1", ".Q6_K", ".Q4_K", ".Q5_K")


@dataclass(frozen=True)
class ConvertSettings:
    """Everything a conversion is told: what to read, how to quantize, what to write."""

    model: str                                   # HF folder, GGUF file of higher precision, or "demo"
    quant: QuantConfig
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    output: Path | None = None                   # None: <model name>-SLIM<bits>.gguf in the current directory
    stock: StockTypes = field(default_factory=StockTypes)
    device: str | None = None                    # None: cuda when torch sees a GPU
    target_bpw: float | None = None              # whole-file bit budget (bit_plan): per-tensor types
    plan_file: Path | None = None                # a plan an earlier --target-bpw run measured (its plan.json)
    save_plan: Path | None = None                # where to keep the measured plan (for --plan with other targets)
    fisher_samples: int = 8                      # calibration sequences of the budget's backward passes
    resume: bool = False
    keep_checkpoints: bool = False
    keep_model: bool = False                     # library use: keep every layer (fake-quant) in ConvertResult.model;
                                                 # by default a finished layer's weights are dropped (weights.py)
    verbose: bool = False                        # llama.cpp converter's log
    tune_epochs: int = 0                         # > 0: then train the written file's group scales end to end
    tune_lr: float | None = None                 #      (slim2gguf/tune.py, quant/e2e.py) on the calibration
    tune_heldout: int | None = None              #      windows, less these held out (None: one in eight)


@dataclass
class ConvertResult:
    summary: dict[str, Any]      # what the last (JSON) line prints
    text: str                    # the human-readable summary
    model: Any                   # the torch model: with keep_model its quantized linears hold the fake-quant
                                 # weights; otherwise its decoder layers are back on the meta device
    results: Any                 # hf name -> QuantizedLinear (a dict with keep_model; otherwise read from OUT.ckpt/:
                                 # the names always, the values while the folder is kept)
    report: Any                  # gguf_out.WriteReport (names, types, row permutations)
    hf_dir: Path                 # the HF folder llama.cpp's converter read (gone for GGUF sources: it lived in
                                 # OUT.ckpt/ unless keep_checkpoints)
    tokenizer: Any = None
    model_name: str | None = None          # converter's --model-name (GGUF sources)
    general: dict[str, Any] | None = None  # converter's --metadata override (GGUF sources: their general.*)
    stream: Any = None                     # the weights.LayerStream the layers came from (what it read and held)


def default_output(model: str, bits: int) -> Path:
    from .model_io import resolve_model

    folder, gguf_file = resolve_model(model)
    stem = Path(gguf_file).stem if gguf_file else folder.resolve().name
    for suffix in _TYPE_SUFFIXES:
        stem = stem.removesuffix(suffix)
    return Path(f"{stem}-SLIM{bits}.gguf")


def checkpoint_key(s: ConvertSettings, device: str) -> dict[str, Any]:
    """Everything that decides the quantized numbers: a resume with any other value is refused."""
    import torch

    from .model_io import resolve_model

    quant = s.quant.key()
    # fuse_qkv only decides how the writer lays out the rows (a resume may change it); joint_qkv changes the bit maps
    # but is keyed only when on, so that checkpoints written before it existed (per-tensor maps) still resume
    quant.pop("fuse_qkv")
    if not quant["joint_qkv"]:
        quant.pop("joint_qkv")
    return {"model": model_fingerprint(*resolve_model(s.model)), **quant, "device": torch.device(device).type,
            "calibration": s.calibration.key() if s.quant.needs_calibration else None,
            "target_bpw": s.target_bpw, "fisher_samples": s.fisher_samples if s.target_bpw else None,
            "plan_file": file_fingerprint(Path(s.plan_file)) if s.plan_file else None,
            "stock": [s.stock.token_embd, s.stock.output, s.stock.fallback]}


def convert(s: ConvertSettings) -> ConvertResult:
    """The whole conversion (see the module docstring); raises SlimError for user errors."""
    import torch

    from .model_io import check_architecture, resolve_model

    times = StageTimes()
    check_architecture(*resolve_model(s.model))   # missing model / architecture: fail before anything else
    out = s.output or default_output(s.model, s.quant.bits)
    check_writable(out)
    device = s.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ck = Checkpoints(checkpoint_dir(out), checkpoint_key(s, device))
    n_done = ck.open(s.resume)
    if s.resume:
        log_stderr(f"resume: {n_done} finished layer(s) in {ck.path}")
    try:
        return _convert(s, out, device, ck, times)
    except SlimError:
        if not ck.finished_layers():   # nothing worth resuming: leave no OUT.ckpt/ behind
            ck.remove()
        raise


def _convert(s: ConvertSettings, out: Path, device: str, ck: Checkpoints, times: StageTimes) -> ConvertResult:
    import torch

    from quant.pipeline import quantize_model

    from .file_report import analyze
    from .hf_export import converter_input
    from .model_io import stream_model

    torch.manual_seed(s.calibration.seed)
    with times.stage("load"):       # config, tokenizer, embedding and head (the layers come one at a time)
        model, tok, desc, stream = stream_model(s.model, keep=s.keep_model)
        source = converter_input(model, tok, desc, ck.hf_dir)
        check_converter_vocab(source.hf_dir, s.verbose)
    with times.stage("calibration"):
        calib = _calibration(s, model, tok, ck, stream)
    done = ck.load_layers() if s.resume else {}
    stored = StoredResults(ck)           # what the writer reads: the layer files, one at a time
    group_sizes: set[int] = set()

    def checkpoint(i: int, qls: dict) -> None:
        if i not in done:      # a resumed layer's checkpoint is already there
            ck.save_layer(i, qls)
        stored.add_layer(i, qls)
        group_sizes.update(ql.group_size for ql in qls.values())

    plan, budget = None, {}
    if s.target_bpw is not None or s.plan_file is not None:
        with times.stage("plan"):
            plan = _plan(s, model, calib, ck, device, stream)
        budget = {"tensor_bits": plan.slim_bits(), "stock_weights": _stock_weights(plan)}
    with times.stage("quantize"):
        res = quantize_model(model, calib, s.quant, device=device, done_layers=done, on_layer_done=checkpoint,
                             layer_io=stream, keep_results=s.keep_model, **budget)
        for name, ql in res.items():   # kept in memory (keep_model), or with no layer file (a SLIM embedding)
            if name not in stored:
                stored.add(name, ql)
                group_sizes.add(ql.group_size)
        for name, fake in budget.get("stock_weights", {}).items():   # a stock output head: after the layers
            if name == "lm_head.weight":
                p = model.get_parameter(name)
                with torch.no_grad():
                    p.copy_(fake(p.data.float()).to(p.dtype))
    summary = calib.summary if calib is not None else None
    meta = slim_metadata(s.quant, summary, source.source_name, group_sizes)
    with times.stage("write"):
        written = write_slim_gguf_atomic(source.hf_dir, out, stored, avg_bits=s.quant.bits, stock=s.stock,
                                         slim_meta=meta, plan=plan, model_name=source.model_name,
                                         metadata_override=source.metadata_override, verbose=s.verbose,
                                         weights=stream.weights if desc["gguf_file"] else None,
                                         fuse_qkv=s.quant.fuse_qkv)
    tune = None
    if s.tune_epochs:    # in place: tune writes a temporary file and renames it over `out`
        from .tune import tune_file
        with times.stage("tune"):
            tune = tune_file(out, s.model, out, calib, s.tune_epochs, s.tune_lr, device, s.calibration.seed,
                             s.tune_heldout)
    totals = analyze(out)["totals"]
    if not s.keep_checkpoints:
        ck.remove()
    result = build_summary(out=out, model=s.model, config=s.quant, n_layers=int(model.config.num_hidden_layers),
                           resumed_layers=len(done), totals=totals, written=written, times=times, device=device,
                           calibration=summary, layers_held=stream.peak_resident,
                           phase_seconds=res.info.get("phase_seconds"))
    if tune:
        result["tune"] = {k: tune[k] for k in ("epochs", "lr", "loss_before", "loss_after", "seconds", "heldout",
                                               "heldout_after", "kept_epoch") if k in tune}
    return ConvertResult(result, format_summary(result, s.stock.fallback), model,
                         dict(res) if s.keep_model else stored, written, source.hf_dir, tok, source.model_name,
                         source.general, stream)


def _plan(s: ConvertSettings, model, calib, ck: Checkpoints, device: str, stream):
    """The bit budget's per-tensor types: from the checkpoint when resuming, else measured (quant/plan.py) and
    allocated (bit_plan), saved, and printed. The measurement runs the whole model (backward passes for the
    Fisher weights): only then are all layers loaded at once."""
    from quant.plan import measure_candidates

    from .bit_plan import (check_target, load_plan_file, make_plan, retarget, save_plan_file, stock_candidates,
                           stock_fake)

    if calib is None:
        raise SlimError("--target-bpw needs calibration data (not available with --method rtn)")
    plan = ck.load_plan() if s.resume else None
    if plan is None and s.plan_file is not None:
        plan = load_plan_file(Path(s.plan_file), model)
        if s.target_bpw is not None:      # the measured losses, allocated again at this target
            check_target(model, s.target_bpw, s.quant.group_size, s.stock.fallback)
            plan = retarget(plan, model, s.target_bpw, s.quant.group_size, s.stock.fallback)
        ck.save_plan(plan)
    if plan is None:
        check_target(model, s.target_bpw, s.quant.group_size, s.stock.fallback)
        release = stream.acquire_all()
        try:
            stats = measure_candidates(model, calib.input_ids, s.quant, stock_candidates, stock_fake,
                                       fisher_samples=s.fisher_samples, device=device)
        finally:
            release()
        plan = make_plan(stats, model, s.target_bpw, s.stock.fallback)
        ck.save_plan(plan)
    if s.save_plan is not None:
        save_plan_file(plan, s.save_plan)
    log_stderr(plan.table())
    return plan


def _stock_weights(plan) -> dict:
    """{hf name: W -> its planned stock type's decoded weight} for quant.pipeline."""
    import torch

    from .bit_plan import stock_fake

    def fake(t, imp):
        return lambda W: stock_fake(t, W, None if imp is None else torch.from_numpy(imp))
    return {n: fake(t, plan.importance.get(n)) for n, t in plan.stock().items()}


def _calibration(s: ConvertSettings, model, tok, ck: Checkpoints, stream):
    """The calibration set (None for RTN): from the checkpoint when resuming, so self-generated text is not
    sampled again; otherwise chosen by calibration_set and saved. Self-generated text needs the whole model."""
    if not s.quant.needs_calibration:
        return None
    saved = ck.load_calibration() if s.resume else None
    if saved is not None:
        return saved
    from .calibration import SELF
    release = stream.acquire_all() if s.calibration.file == SELF else (lambda: None)
    try:
        calib = calibration_set(s.calibration, model, tok)
    finally:
        release()
    ck.save_calibration(calib)
    return calib
