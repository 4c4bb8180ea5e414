"""Layer-by-layer sequential quantization of a llama/mistral/qwen2 causal LM (GPTQ's llama.py loop).

For each decoder layer, in order: run the calibration activations (coming out of the already *quantized*
previous layers) through it with hooks that accumulate each linear's Hessian and keep a few input rows for
SBA's KL score; quantize its seven linears; write their fake-quant weights d*q + m into the model; run the
activations through the quantized layer to get the next layer's inputs. With `true_sequential` the seven
are quantized in four stages (q/k/v, o, gate/up, down), each stage's inputs captured with the earlier stages'
weights already quantized, as GPTQ's true-sequential option does. q/k/v read the same input: with
config.joint_qkv (opt-in: it costs accuracy) SBA chooses one bit map for the three (_joint_qkv_bits), so a writer
can store every layer's as one tensor; each is still quantized, checkpointed and returned on its own. Only one
layer sits on the compute device at a time, and only one layer's activations (plus its outputs) are held: memory
is one decoder layer plus the calibration activations.
"""
from __future__ import annotations

import sys
import time
from dataclasses import replace
from typing import Callable

import torch

from .calibration import CalibrationSet
from .config import SLIM_METHODS, QuantConfig
from .blockwise import layer_forward, to_store, train_block
from .hessian import HessianAccumulator, inverse_hessian_cholesky
from .layer import joint_sba_bits, quantize_linear, rtn_group_fit, sba_group_bits
from .phase_clock import PhaseClock
from .quantizer import pick_group_size
from .result import QuantizedLinear
from .rtn import fit_groups

# a bit budget may make these SLIM too (quant/plan.py names them the same way)
EMBEDDING = "model.embed_tokens.weight"
HEAD = "lm_head.weight"

# Order matters only for reading the progress output; all seven see the same layer input pass.
LINEAR_NAMES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


class QuantizationResult(dict):
    """dict[hf weight name -> QuantizedLinear], plus `.info` (settings, calibration summary, timing)."""

    info: dict


class _Stop(Exception):
    pass


def decoder_layers(model) -> torch.nn.ModuleList:
    return model.model.layers


# the share of free GPU memory the calibration activations may take; the rest is for one layer's weights, its
# Hessians (a 70B's down projection: 28672^2 fp32 = 3 GiB) and GPTQ's work
ACTIVATION_SHARE = 0.5


def activation_store(device: torch.device, n_tokens: int, hidden: int, copies: int) -> torch.device:
    """Where the calibration activations live: on the compute device, or on the host (pinned, each mini-batch
    copied in when a layer reads it) when `copies` fp32 [n_tokens, hidden] tensors would take more than
    ACTIVATION_SHARE of the GPU's free memory."""
    if device.type != "cuda":
        return device
    free, _ = torch.cuda.mem_get_info(device)
    return device if n_tokens * hidden * 4 * copies < ACTIVATION_SHARE * free else torch.device("cpu")


@torch.no_grad()
def capture_layer0_inputs(model, input_ids: torch.Tensor, batch_size: int, device, store=None) -> list[tuple]:
    """[(hidden_states, kwargs)] per mini-batch, as the first decoder layer receives them; the hidden states kept
    on `store` (default: device), the kwargs (rotary tables, masks: small) on device."""
    store = torch.device(store if store is not None else device)
    layers = decoder_layers(model)
    captured = []

    def hook(module, args, kwargs):
        hs = args[0] if args else kwargs.pop("hidden_states")
        kw = {k: v for k, v in kwargs.items() if k not in ("hidden_states", "past_key_values", "past_key_value")}
        kw["use_cache"] = False
        captured.append((to_store(hs.detach(), store), kw))
        raise _Stop

    inner = model.model
    moved = [m for m in (getattr(inner, "embed_tokens", None), getattr(inner, "rotary_emb", None)) if m is not None]
    for m in moved:
        m.to(device)
    h = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for i in range(0, input_ids.shape[0], batch_size):
            try:
                inner(input_ids=input_ids[i:i + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        h.remove()
        for m in moved:
            m.to("cpu")
    return captured


# true-sequential order: a stage's inputs are computed with the earlier stages already quantized
SEQUENTIAL_STAGES = (LINEAR_NAMES[:3], LINEAR_NAMES[3:4], LINEAR_NAMES[4:6], LINEAR_NAMES[6:])
# linears that read the very same input tensor (llama/mistral/qwen2): one Hessian and one set of KL rows serves
# them all; the down projection's and gate/up's Hessians are most of a layer's Hessian cost on a CPU
SAME_INPUT_AS = {"self_attn.k_proj": "self_attn.q_proj", "self_attn.v_proj": "self_attn.q_proj",
                 "mlp.up_proj": "mlp.gate_proj"}
# the linears that get one SBA bit map between them (config.joint_qkv), so a file can hold them as one tensor
QKV = LINEAR_NAMES[:3]


@torch.no_grad()
def _capture_inputs(layer, mods: dict, batches, config: QuantConfig, kl_gen, device) -> dict:
    """{name: (H, KL rows)} of the given linears of `layer` over the calibration batches (one forward pass):
    the Hessian of each linear's inputs and a seeded sample of its first mini-batch's rows for SBA's KL score."""
    hess, kl_rows, handles = {}, {}, []
    shared = {n: SAME_INPUT_AS[n] for n in mods if SAME_INPUT_AS.get(n) in mods}
    for n, mod in mods.items():
        if n in shared:
            continue
        hess[n] = HessianAccumulator(mod.in_features, device)

        def hook(mod, args, out, n=n):
            x = args[0].detach()
            hess[n].add_batch(x)
            if n not in kl_rows:
                flat = x.reshape(-1, x.shape[-1]).float()
                kl_rows[n] = flat[torch.randperm(flat.shape[0], generator=kl_gen)[:config.kl_tokens].to(flat.device)]
        handles.append(mod.register_forward_hook(hook))
    try:
        for hs, kw in batches:
            layer_forward(layer, hs, kw)
    finally:
        for h in handles:
            h.remove()
    src = lambda n: shared.get(n, n)
    return {n: (hess[src(n)].H, kl_rows.get(src(n))) for n in mods}


def _joint_qkv_bits(mods: dict, stats: dict, config_of: Callable[[str], QuantConfig], prefix: str,
                    clock: PhaseClock | None = None) -> dict[str, tuple]:
    """{name: (bits [G], SBA info, H's factor)} for q/k/v when one SBA bit map serves all three
    (quant/layer.py joint_sba_bits): config.joint_qkv, SliM with SBA, and all three SLIM (none left to a stock
    type by a bit budget) with the same settings (the same average bits) and group size; the factor of their
    shared Hessian comes along so it is computed once. Empty otherwise: each is quantized with its own map."""
    if not all(n in mods and n in stats for n in QKV):
        return {}
    configs = [config_of(prefix + n + ".weight") for n in QKV]
    config = configs[0]
    if any(c != config for c in configs) or not (config.joint_qkv and config.sba
                                                 and config.method in SLIM_METHODS):
        return {}
    Ws = [mods[n].weight.data.float() for n in QKV]
    H, X_kl = stats[QKV[0]]
    g = pick_group_size(Ws[0].shape[1], config.group_size)
    if g is None or any(W.shape[1] != Ws[0].shape[1] or stats[n][0] is not H for n, W in zip(QKV, Ws)):
        return {}
    phase = clock if clock is not None else PhaseClock()
    with phase("cholesky"):
        factor = inverse_hessian_cholesky(H, config.percdamp)
    with phase("sba"):
        bits, info = joint_sba_bits(Ws, factor[0], torch.diag(H).float(), X_kl, config, g)
    return {n: (bits, info, factor) for n in QKV}


def _train_layer(layer, mods: dict, batches, targets, config_of: Callable[[str], QuantConfig], prefix: str, kl_gen,
                 device, li: int, progress: bool) -> tuple[dict[str, QuantizedLinear], dict]:
    """SliM+: SBA's bit map and the weighted fit per linear (Hessians on the quantized path, as in `slim`), then
    block-wise training of the quantizers (quant/blockwise.py). Returns {name: QuantizedLinear} and the losses.
    config_of(hf weight name): the settings of that linear (its own average bits under a bit budget)."""
    config = config_of("")
    stats = _capture_inputs(layer, mods, batches, config, kl_gen, device)
    joint = _joint_qkv_bits(mods, stats, config_of, prefix)   # q/k/v: one bit map (config.joint_qkv)
    linears, sba_k = {}, {}
    for n, mod in mods.items():
        config = config_of(prefix + n + ".weight")
        W = mod.weight.data.float()
        g = pick_group_size(W.shape[1], config.group_size)
        if g is None:      # width not divisible by 64: left in full precision (stock type in the file)
            continue
        H, X_kl = stats[n]
        if config.train_init == "gptq":     # SliM as `slim` computes it; training starts at its weights
            if n in joint:
                ql, _ = quantize_linear(W, H, X_kl, config, g, factor=joint[n][2], group_bits=joint[n][0])
                info = joint[n][1]
            else:
                ql, info = quantize_linear(W, H, X_kl, config, g)
            mod.weight.data.copy_(ql.dequantize().to(mod.weight.device, mod.weight.dtype))
            bits, d0, m0 = ql.bits, ql.d, ql.m
        else:
            U, _ = joint[n][2] if n in joint else inverse_hessian_cholesky(H, config.percdamp)
            hdiag = torch.diag(H).float()
            bits, info = joint[n][:2] if n in joint else sba_group_bits(W, U, hdiag, X_kl, config, g)
            d0, m0 = rtn_group_fit(W, U, hdiag, bits, config, g)
        if "k" in info:
            sba_k[n] = info["k"]
        linears[n] = (bits, g, d0, m0)
    del stats
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=config.epochs * len(batches), desc=f"train layer {li} ({config.train})", unit="step",
                   leave=False)
    step = (lambda loss: (bar.update(1), bar.set_postfix(mse=f"{loss:.3g}"))) if bar is not None else None
    try:
        qls, info = train_block(layer, linears, batches, targets, config.train, config.epochs, config.lr,
                                seed=config.seed * 1_000_003 + li, on_step=step, loss=config.train_loss)
    finally:
        if bar is not None:
            bar.close()
    info["sba_k"] = sba_k
    return qls, info


def quantize_model(model, calibration: CalibrationSet | torch.Tensor | None, config: QuantConfig, *,
                   device=None, done_layers: dict[int, dict[str, QuantizedLinear]] | None = None,
                   on_layer_done: Callable[[int, dict[str, QuantizedLinear]], None] | None = None,
                   tensor_bits: dict[str, int] | None = None,
                   stock_weights: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
                   layer_io=None, keep_results: bool = True, progress: bool = True) -> QuantizationResult:
    """Quantize every decoder-layer linear of `model` in place (fake-quant weights) and return the results.

    calibration: a CalibrationSet (its summary goes into `.info`) or LongTensor [nsamples, seqlen]; None for
    RTN, which needs none. done_layers: {layer index: {name: QuantizedLinear}} from an earlier run (resume):
    written into the model, not recomputed. on_layer_done(i, {name: QuantizedLinear}) after each layer
    (checkpointing). Deterministic for a given model, calibration, config and device.

    A whole-file bit budget (quant/bit_budget.py) comes in as tensor_bits {hf weight name: SLIM average bits}
    (config.bits elsewhere) and stock_weights {hf weight name: W -> what its stock type decodes to}: those
    tensors get no QuantizedLinear, their fake-quant weight goes into the model before the layer is quantized,
    so everything after them sees what the file will compute. An untied EMBEDDING or HEAD in tensor_bits is
    made SLIM too (the embedding by the weighted fit before anything else, the head after the last layer, its
    result passed to on_layer_done as layer number n_layers).

    layer_io: an object with acquire(i) / release(i) (slim2gguf.weights.LayerStream) when the model's decoder
    layers are not all in memory: layer i is acquired just before it is quantized and released when its output
    has been computed, so memory holds one decoder layer (plus the embedding, head and activations).
    keep_results=False: a finished layer's results go only to on_layer_done (which stores them), not into the
    returned dict, so they do not pile up in memory (the codes are a byte per weight).
    """
    tensor_bits, stock_weights = tensor_bits or {}, stock_weights or {}
    configs: dict[int, QuantConfig] = {}

    def config_of(key: str) -> QuantConfig:
        b = tensor_bits.get(key, config.bits)
        if b not in configs:
            configs[b] = config if b == config.bits else replace(config, bits=b)
        return configs[b]
    calib_summary = None
    if isinstance(calibration, CalibrationSet):
        calib_summary = calibration.summary
        calibration = calibration.input_ids
    if config.needs_calibration and calibration is None:
        raise ValueError(f"method {config.method!r} needs calibration tokens")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    done_layers = done_layers or {}
    t0 = time.time()
    clock = PhaseClock(device)   # seconds per phase of the layer loop, in .info["phase_seconds"]

    layers = decoder_layers(model)
    results = QuantizationResult()
    sba_k = {}   # weight name -> SBA's chosen k (number of b+1-bit groups = number of b-1-bit groups)
    need_acts = config.needs_calibration
    trains = config.method == "slim+"
    batch = config.train_batch if trains else config.batch_size
    if EMBEDDING in stock_weights:   # before the capture: layer 0 sees the embedding the file will hold
        emb = model.get_input_embeddings().weight
        with torch.no_grad():
            emb.data.copy_(stock_weights[EMBEDDING](emb.data.float()).to(emb.dtype))
    if EMBEDDING in tensor_bits:
        emb = model.get_input_embeddings().weight
        g = pick_group_size(emb.shape[1], config.group_size)
        ql = fit_groups(emb.data.float(), tensor_bits[EMBEDDING], g)
        with torch.no_grad():
            emb.data.copy_(ql.dequantize().to(emb.dtype))
        results[EMBEDDING] = ql
    store = device
    if need_acts:   # inputs and outputs of a layer, and slim+'s targets
        copies = 2 + (({"fp": 1, "quant": 1, "both": 2}[config.train_target]) if trains else 0)
        store = activation_store(device, calibration.numel(), model.config.hidden_size, copies)
        if store != device:
            print(f"calibration activations ({copies} x {calibration.numel()} x {model.config.hidden_size} fp32) "
                  f"stay on the host: too large for the GPU's free memory", file=sys.stderr, flush=True)
    batches = capture_layer0_inputs(model, calibration, batch, device, store) if need_acts else []
    # slim+ trains each block towards the full-precision block's output on the full-precision inputs
    # (no copy needed: each layer's pass makes new tensors, nothing writes into these)
    fp_batches = list(batches) if trains else []
    train_info = {}
    it = range(len(layers))
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc=f"quantize {config.method} {config.bits}-bit", unit="layer")
    for li in it:
        with clock("load"):
            if layer_io is not None:
                layer_io.acquire(li)
            layer = layers[li].to(device)
        prefix = f"model.layers.{li}."
        mods = {}
        for n in LINEAR_NAMES:
            mod = layer.get_submodule(n)
            if prefix + n + ".weight" in stock_weights:
                with torch.no_grad():
                    mod.weight.data.copy_(stock_weights[prefix + n + ".weight"](mod.weight.data.float())
                                          .to(mod.weight.device, mod.weight.dtype))
            else:
                mods[n] = mod
        if trains:   # with the original weights, before anything of this layer is quantized
            with torch.no_grad():
                targets = [layer_forward(layer, hs, kw) for hs, kw in fp_batches]
                local = [layer_forward(layer, hs, kw) for hs, kw in batches] \
                    if config.train_target != "fp" and li not in done_layers else None
            train_to = {"fp": [targets], "quant": [local], "both": [targets, local]}[config.train_target]
        if li in done_layers:
            prev = done_layers[li]   # keyed by full HF name (short names accepted too)
            qls = {prefix + n + ".weight": prev.get(prefix + n + ".weight", prev.get(n)) for n in mods}
            qls = {k: v for k, v in qls.items() if v is not None}
        elif trains:
            kl_gen = torch.Generator().manual_seed(config.seed * 1_000_003 + li)
            with clock("train"):
                qls, info = _train_layer(layer, mods, batches, train_to, config_of, prefix, kl_gen, device, li,
                                         progress)
            del local, train_to
            train_info[prefix[:-1]] = info
            sba_k.update({prefix + n + ".weight": k for n, k in info.pop("sba_k").items()})
            qls = {prefix + n + ".weight": ql for n, ql in qls.items()}
        else:
            # one generator per layer, seeded by (seed, layer): a resumed run samples the same KL rows
            kl_gen = torch.Generator().manual_seed(config.seed * 1_000_003 + li)
            qls = {}
            for stage in (SEQUENTIAL_STAGES if config.true_sequential else (LINEAR_NAMES,)):
                stage = [n for n in stage if n in mods]
                with clock("capture"):
                    stats = _capture_inputs(layer, {n: mods[n] for n in stage}, batches, config, kl_gen, device) \
                        if need_acts and stage else {}
                # q/k/v: one SBA bit map for the three (config.joint_qkv), each then quantized with it
                joint = _joint_qkv_bits({n: mods[n] for n in stage}, stats, config_of, prefix, clock)
                for n in stage:
                    mod = mods[n]
                    W = mod.weight.data.float()
                    g = pick_group_size(W.shape[1], config.group_size)
                    if g is None:    # width not divisible by 64: left in full precision (stock type in the file)
                        continue
                    H, X_kl = stats.get(n, (None, None))
                    if n in joint:
                        bits, linfo, factor = joint[n]
                        ql, _ = quantize_linear(W, H, X_kl, config_of(prefix + n + ".weight"), g, factor=factor,
                                                clock=clock, group_bits=bits)
                    else:
                        ql, linfo = quantize_linear(W, H, X_kl, config_of(prefix + n + ".weight"), g, clock=clock)
                    qls[prefix + n + ".weight"] = ql
                    if "k" in linfo:
                        sba_k[prefix + n + ".weight"] = linfo["k"]
                    if config.true_sequential:   # the next stage's inputs come through this quantized weight
                        mod.weight.data.copy_(ql.dequantize().to(mod.weight.device, mod.weight.dtype))
                del stats, joint
        for n, mod in mods.items():
            ql = qls.get(prefix + n + ".weight")
            if ql is None:
                continue
            mod.weight.data.copy_(ql.dequantize().to(mod.weight.device, mod.weight.dtype))
        if need_acts and (li + 1 < len(layers) or HEAD in tensor_bits):   # the head reads the last one's
            with torch.no_grad(), clock("forward"):   # the next layer sees what the quantized model will compute
                batches = [(layer_forward(layer, hs, kw), kw) for hs, kw in batches]
        if trains:
            fp_batches = [(t, kw) for t, (_, kw) in zip(targets, fp_batches)]
        with clock("load"):
            layers[li] = layer.to("cpu") if device.type != "cpu" else layer
            if layer_io is not None:
                layer_io.release(li)
        if keep_results or on_layer_done is None:
            results.update(qls)
        if on_layer_done is not None:
            on_layer_done(li, qls)
    if HEAD in tensor_bits:
        n = len(layers)
        qls = done_layers.get(n) or {HEAD: _quantize_head(model, batches, config_of(HEAD), device)}
        head = model.get_output_embeddings().weight
        with torch.no_grad():
            head.data.copy_(qls[HEAD].dequantize().to(head.dtype))
        if keep_results or on_layer_done is None:
            results.update(qls)
        if on_layer_done is not None:
            on_layer_done(n, qls)
    results.info = {**config.key(), "calibration": calib_summary, "seconds": time.time() - t0, "sba_k": sba_k,
                    "phase_seconds": clock.rounded()}
    if trains:
        results.info["training"] = train_info
    return results


@torch.no_grad()
def _quantize_head(model, batches, config: QuantConfig, device) -> QuantizedLinear:
    """The output head as a SLIM tensor (a bit budget chose it): SliM on the final norm's output of the
    quantized model, like a decoder linear (checkpointed as one more 'layer')."""
    kl_gen = torch.Generator().manual_seed(config.seed * 1_000_003 + len(decoder_layers(model)))
    H, X_kl = head_hessian(model, batches, device, config.kl_tokens, kl_gen)
    W = model.get_output_embeddings().weight.data.float().to(device)
    ql, _ = quantize_linear(W, H, X_kl, config, pick_group_size(W.shape[1], config.group_size))
    return ql


def head_hessian(model, batches, device, kl_tokens: int = 0, kl_gen: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """GPTQ's Hessian of the output head (its input is the final norm's output of the last layer's `batches`)
    and, with kl_tokens, that many of those inputs sampled for SBA's KL score."""
    norm = model.model.norm.to(device)
    acc = HessianAccumulator(model.get_output_embeddings().in_features, device)
    X_kl = None
    with torch.no_grad():
        for hs, _ in batches:
            x = norm(hs.to(device))
            acc.add_batch(x)
            if kl_tokens and X_kl is None:
                flat = x.reshape(-1, x.shape[-1]).float()
                X_kl = flat[torch.randperm(flat.shape[0], generator=kl_gen)[:kl_tokens].to(flat.device)]
    norm.to("cpu")
    return acc.H, X_kl


def average_bits(results: dict[str, QuantizedLinear]) -> tuple[float, float]:
    """(code bits per weight, storage bits per weight incl. fp16 d and m) over all quantized weights."""
    n = code = store = 0
    for ql in results.values():
        rows, cols = ql.shape
        w = rows * cols
        n += w
        code += rows * ql.group_size * float(ql.bits.float().sum())
        store += rows * ql.group_size * float(ql.bits.float().sum()) + rows * ql.bits.numel() * 32
    return (code / n, store / n) if n else (0.0, 0.0)
