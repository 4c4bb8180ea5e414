"""The quantizer's settings: one frozen dataclass that goes from the command line to every layer.

Everything that decides the quantized numbers is a field here (plus the calibration tokens and the device), so
`convert` also keys its per-layer checkpoints by `QuantConfig.key()` (slim2gguf/convert.py checkpoint_key): a resumed
run with any other value is refused, except fuse_qkv (only the writer reads it) and joint_qkv, which is keyed only
when on (checkpoints from before it existed hold per-tensor maps).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .blockwise import DEFAULT_LR, TRAIN_INITS, TRAIN_LOSSES, TRAIN_MODES, TRAIN_TARGETS
from .sqc import DEFAULT_ALPHA, DEFAULT_TAUS, DEFAULT_Z

# SliM-LLM (SBA + SQC + GPTQ), SliM-LLM+ (SBA's bit map + block-wise training, quant/blockwise.py), GPTQ with
# uniform bits, round-to-nearest
METHODS = ("slim", "slim+", "gptq", "rtn")
SLIM_METHODS = ("slim", "slim+")    # the methods with SBA/SQC and the 2-bit levers
AVERAGE_BITS = (2, 3)               # group widths b-1..b+1 must fit the 2-bit tag (1..4)
GROUP_SIZES = (64, 128)             # the SLIM storage types' group sizes
FITS = ("weighted", "minmax")       # how a group's (d, m) is chosen (quant/group_fit.py, or min/max + SQC's taus)
IMPORTANCES = ("hdiag", "obs")      # the weighted fit's per-column weight: diag(H) (llama.cpp's imatrix) or the
                                    # OBS one, 1/[chol(H^-1)]_jj^2
# --joint-qkv makes SBA share a map so that q/k/v fuse; with --no-fuse-qkv it would cost accuracy for nothing
JOINT_WITHOUT_FUSING = "--joint-qkv shares one q/k/v bit map so that they fuse; it cannot go with --no-fuse-qkv"


@dataclass(frozen=True)
class QuantConfig:
    method: str = "slim"
    bits: int = 2                       # average bits per weight
    group_size: int = 128               # preferred; 64 per tensor where the input width needs it
    sba: bool = True                    # salience-determined bit allocation (SliM only)
    sqc: bool = True                    # salience-weighted quantizer calibration (SliM only)
    seed: int = 0                       # SBA's KL rows: layer i samples with seed * 1_000_003 + i
    kl_tokens: int = 512                # calibration rows SBA scores its candidates on
    percdamp: float = 0.01              # GPTQ's damping, fraction of mean(diag H)
    sqc_z: float = DEFAULT_Z            # |z-score| of salience that marks a weight locally salient
    sqc_alpha: float = DEFAULT_ALPHA    # weight of the salient weights' error in SQC's search
    sqc_taus: tuple = DEFAULT_TAUS      # clipping factors SQC tries (1.0 first: ties keep min/max)
    batch_size: int = 8                 # calibration sequences per forward pass (fixes the Hessian's summation)
    # the 2-bit levers (issue 12; SliM only, the GPTQ/RTN baselines stay as published)
    fit: str = "weighted"               # FITS: importance-weighted least squares (default) or min/max
    importance: str = "hdiag"           # IMPORTANCES
    act_order: bool = False             # GPTQ visits whole groups by decreasing sum of diag(H) (static groups)
    true_sequential: bool = False       # q/k/v, o, gate/up, down: each sees the already quantized ones' outputs
    # q/k/v read the same input, and a writer can hold them as one tensor (GGUF attn_qkv: one mat-vec instead of
    # three) only where their bit maps coincide, since a SLIM tensor has one map for all its rows.
    # fuse_qkv: the writer fuses the layers whose maps happen to coincide (free: the weights are the same either
    # way); False: never (`--no-fuse-qkv`). It does not change the quantized numbers.
    # joint_qkv (SliM with SBA only): SBA chooses one map for the three stacked (quant/layer.py joint_sba_bits), so
    # every layer whose q/k/v share their settings fuses; it costs accuracy (docs/results/2026-12-04-fused-qkv.md),
    # hence opt-in (`--joint-qkv`), and meaningless without fusing (refused with fuse_qkv False)
    fuse_qkv: bool = True
    joint_qkv: bool = False
    # slim+ only (issue 14): what the block-wise loop trains, for how many epochs over the calibration batches,
    # at which AdamW rate (0: the mode's DEFAULT_LR)
    train: str = "weights"              # TRAIN_MODES (lwc is the paper's SliM-LLM+; weights measured best)
    epochs: int = 4
    lr: float = 0.0
    train_batch: int = 2                # sequences per training step (slim+ also captures in batches of this)
    train_init: str = "gptq"            # TRAIN_INITS: start from SliM's GPTQ result or the weighted fit (RTN)
    train_target: str = "fp"            # TRAIN_TARGETS: what the block output is trained towards
    train_loss: str = "mse"             # TRAIN_LOSSES: how the block output's error is measured

    def __post_init__(self):
        for name, allowed in (("method", METHODS), ("bits", AVERAGE_BITS), ("group_size", GROUP_SIZES),
                              ("fit", FITS), ("importance", IMPORTANCES), ("train", TRAIN_MODES),
                              ("train_init", TRAIN_INITS), ("train_target", TRAIN_TARGETS),
                              ("train_loss", TRAIN_LOSSES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.epochs < 0 or not self.lr >= 0 or self.train_batch < 1:
            raise ValueError("epochs and lr must not be negative, train_batch at least 1")
        if self.joint_qkv and not self.fuse_qkv:
            raise ValueError(JOINT_WITHOUT_FUSING)
        # SBA and SQC are parts of SliM: RTN and GPTQ have neither, and the settings (and the file) say so
        if self.method not in SLIM_METHODS:
            for name, plain in (("sba", False), ("sqc", False), ("fit", "minmax"), ("act_order", False),
                                ("true_sequential", False)):
                object.__setattr__(self, name, plain)
        if not self.sba:    # no SBA, no map to share: every map is uniform (and every layer fuses anyway)
            object.__setattr__(self, "joint_qkv", False)
        if self.method == "slim+":
            # the block-wise loop captures its own inputs (no true-sequential); act-order shapes the GPTQ result the
            # training starts from, so it only means something with train_init gptq
            if self.train_init != "gptq":
                object.__setattr__(self, "act_order", False)
            object.__setattr__(self, "true_sequential", False)
            if self.lr == 0:
                object.__setattr__(self, "lr", DEFAULT_LR[self.train])
        else:
            for name, plain in (("train", "weights"), ("epochs", 0), ("lr", 0.0), ("train_batch", 2),
                                ("train_init", "gptq"), ("train_target", "fp"), ("train_loss", "mse")):
                object.__setattr__(self, name, plain)
        object.__setattr__(self, "sqc_taus", tuple(self.sqc_taus))

    @property
    def needs_calibration(self) -> bool:
        """RTN looks at the weights only; GPTQ and SliM(+) need calibration activations."""
        return self.method != "rtn"

    def key(self) -> dict:
        """The settings as plain JSON values (checkpoint manifest, result info)."""
        d = asdict(self)
        d["sqc_taus"] = list(self.sqc_taus)
        return d
