"""Compressed CPU inference for neural models: int8 dynamic quantisation, or bfloat16.

`quantize(model, "int8")` returns a scoring copy of a fitted `TorchRecommender` whose
``nn.Linear`` layers (but `FLOAT_LINEARS` and the item tables, `FLOAT_MODULES`) are replaced by dynamically quantised ones
(``torch.ao.quantization.quantize_dynamic``: int8 weights, activations quantised per call with a
per-tensor range); embeddings, attention and the final ``user · item`` product stay float32.
`quantize(model, "bf16")` casts the whole module to bfloat16 — only where the CPU has bf16
units (AVX512-BF16 or AMX); without them the arithmetic is emulated and slower than float32, so it
is refused (`cpu_bf16_supported` says which). The copy scores in its own dtype (user states, the
``user · item`` product, incremental states) and returns float32 scores; the MF and BPR fold-ins,
linear solves and gradient steps rather than layers, read the bf16 tables as float32.

The copy shares nothing with the original (the float32 model is untouched) and is for scoring:
`score`, `recommend` and the incremental-state calls (`init_state`, `step_state`, `score_state`)
run through the same quantised layers, so the state invariant holds up to quantisation noise (the
activation range depends on the batch). Saving, training and `partial_fit` belong to the float32
model: `is_quantized` tells callers (e.g. the jobs layer refuses to save such a copy). Float32
stays the default (`RunOptions.precision`).
"""

from __future__ import annotations

import copy
import warnings
from typing import Literal, get_args

import torch
from torch import nn

from dynrec.errors import DynrecError, NotFittedError
from dynrec.models.base import Recommender
from dynrec.models.neural.base import TorchRecommender

__all__ = ["Precision", "apply_precision", "cpu_bf16_supported", "is_quantized", "quantize"]

Precision = Literal["float32", "int8", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
FLOAT_LINEARS: frozenset[str] = frozenset({"qkv"})
"""Linear layers (by attribute name) kept float32: their weight is read directly rather than
called (the fused query/key/value projection of `dynrec.models.seq.transformer.Block`, sliced by
the pruned scoring path), which a quantised module (packed weights) does not allow."""
FLOAT_MODULES: frozenset[str] = frozenset({"item_emb", "out_emb"})
"""Top-level modules kept float32 whole: the item tables (and a text projection that builds one),
the output side of every score; the table is cached between calls and shared by the input side."""
_META_KEY = "inference_precision"


def cpu_bf16_supported() -> bool:
    """Whether this CPU has bfloat16 arithmetic units (AVX512-BF16 or AMX tiles)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def is_quantized(model: Recommender) -> bool:
    """Whether `model` is a reduced-precision scoring copy made by `quantize`."""
    return bool(model.meta.get(_META_KEY, "float32") != "float32")


def quantize(model: Recommender, precision: Precision | str) -> Recommender:
    """A scoring copy of `model` at `precision` (``float32`` returns `model` itself).

    Only neural models (`TorchRecommender`) on the CPU; int8 quantises every ``nn.Linear``, bf16
    needs a CPU with bf16 units. Raises `DynrecError` naming what is not supported."""
    if precision not in PRECISIONS:
        raise DynrecError(f"precision={precision!r} is not allowed; expected one of {', '.join(PRECISIONS)}")
    if precision == "float32":
        return model
    if not isinstance(model, TorchRecommender):
        raise DynrecError(
            f"precision={precision!r}: model {model.name!r} is not a neural model; only float32 applies"
        )
    if model.net is None:
        raise NotFittedError(f"{model.name} is not fitted")
    if is_quantized(model):
        raise DynrecError(
            f"{model.name} is already a {model.meta[_META_KEY]} copy; quantise the float32 model"
        )
    if model.device.type != "cpu":
        raise DynrecError(f"precision={precision!r} is for CPU scoring; this model runs on {model.device}")
    if precision == "bf16" and not cpu_bf16_supported():
        raise DynrecError(
            "precision='bf16': this CPU has no bfloat16 units (AVX512-BF16/AMX), so bf16 would be "
            "emulated and slower than float32; use precision='int8'"
        )
    out = copy.deepcopy(model)
    assert out.net is not None
    net = out.net.eval()
    if precision == "int8":
        names = {
            n
            for n, m in net.named_modules()
            if isinstance(m, nn.Linear)
            and n.split(".")[-1] not in FLOAT_LINEARS
            and n.split(".")[0] not in FLOAT_MODULES
        }
        if not names:
            raise DynrecError(f"precision='int8': model {model.name!r} has no linear layers to quantise")
        spec = dict.fromkeys(names, torch.ao.quantization.default_dynamic_qconfig)
        with warnings.catch_warnings():  # torch marks eager-mode quantisation deprecated
            warnings.simplefilter("ignore")
            out.net = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
                net, spec, dtype=torch.qint8, inplace=True
            )
    else:
        out.net = net.to(torch.bfloat16)
    out.meta[_META_KEY] = precision
    return out


def apply_precision(model: Recommender) -> Recommender:
    """`model` at its run option ``options.precision`` (`RunOptions.precision`; float32 = itself).
    For callers that load a model to score with it (recommend, evaluate, serve)."""
    return quantize(model, model.options.precision)
