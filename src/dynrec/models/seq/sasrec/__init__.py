"""SASRec: a causal Transformer over the user's item sequence, full-catalogue cross-entropy.

Architecture (Kang & McAuley 2018, with the loss of Klenitskiy & Vasilev 2023 "SASRec+CE"):
item embeddings (tied with the output layer) → ``num_layers`` pre-LayerNorm Transformer blocks
(`F.scaled_dot_product_attention`, causal) → final LayerNorm → scores ``h @ Eᵀ``. Trained on one
row per user with a next-item target at every position (`dynrec.models.seq.common`).

Positions (``positional``):

* ``"rope"`` (default): rotary embeddings on queries and keys, so attention depends only on the
  *distance* between two events. Attention is limited to a sliding window of ``max_len`` events
  (each position sees itself and the ``max_len - 1`` previous events). The model is then a fixed
  function of the history that a per-user key/value cache reproduces exactly: `init_state` builds
  the cache, `step_state` appends one event in O(max_len) (independent of the history length — a ring
  buffer of ``max_len`` keys per layer; the rotation baked into a cached key stays valid as the
  window slides), `score_state` ranks the catalogue. `score` recomputes the same function from the
  last ``num_layers * (max_len - 1) + 1`` events (the receptive field of the stacked windows).
* ``"absolute"``: learned position embeddings (the original SASRec) over the last ``max_len``
  events; no incremental state (positions shift when the window slides). Kept for the ablation.

Long- and short-term interest (``long_term``):

* ``"none"``: the short-term state is the last position's hidden vector.
* ``"gate"``: a long-term representation — the mean embedding of the user's *whole* history
  (not just the window; a running sum in the incremental state) — is projected and fused with the
  short-term state by a learned gate ``g = σ(W[h; l])``, ``u = g ⊙ h + (1 − g) ⊙ l``. In training the
  mean runs over the events up to each position (causal prefix mean inside the training row).

Item text (``item_text="on"``): each item is its ID embedding plus a learned projection of its
frozen language-model text embedding (`dynrec.models.seq.item_text.TextItemEmbedding`), on the
input and the tied output side, with ID-dropout in training. Items without training events (cold
items, items added with `add_items`) are scored from their text alone. The jobs layer encodes the
text (`dynrec.text`) and hands the table over with `set_item_text` before `fit`; the table is saved
with the model.

Users with no history are scored by training popularity (``log(1 + count)``).
"""

from dynrec.models.seq.sasrec.config import SASRecConfig, auto_batch_size, auto_dropout, auto_profile
from dynrec.models.seq.sasrec.model import SASRec
from dynrec.models.seq.sasrec.net import SASRecNet, SASRecState

__all__ = [
    "SASRec",
    "SASRecConfig",
    "SASRecNet",
    "SASRecState",
    "auto_batch_size",
    "auto_dropout",
    "auto_profile",
]
