# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Train a small character-level Transformer language model with chill-jax attention.

A decoder-only Transformer in Flax NNX (token and position embeddings,
pre-LayerNorm blocks with ``nnx.MultiHeadAttention`` whose ``attention_fn`` is
``chill_jax.make_attention_fn(mask)``, a GELU MLP and an output head tied to
the token embedding), trained with optax AdamW under ``jax.jit`` on the
Python documentation topics that ship with CPython (``pydoc_data.topics``):
no download. Tokens are characters.

With ``--compare`` the same model is trained a second time, from the same
initialisation and on the same batches, with attention computed by
``jax.nn.dot_product_attention`` and the equivalent dense boolean mask; both
loss curves are reported and the script exits with status 1 if they disagree
beyond a tolerance (see ``COMPARE_RTOL``).

Run: python examples/train_lm.py [--mask sliding --window 64] [--compare]
(on a 2-core CPU the default run takes about a minute, compilation included).
Needs flax, optax and tqdm: ``pip install -e ".[examples]"``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

import chill_jax

MASKS = ("causal", "sliding", "chunkwise")

# --compare tolerances on the relative difference |a - b| / |b| between the two
# loss curves. The dense and the blockwise attention compute the same float32
# function with different summation orders: at the first step (identical
# parameters and batch) the losses agree to ~1e-7 relative. Every optimizer
# step feeds such rounding differences back into the parameters, and Adam's
# division by sqrt(v) amplifies them for parameters with tiny gradients, so
# the curves drift apart slowly: measured on a 2-core CPU with the default
# model, over 400 steps with each mask and two seeds, the largest relative
# difference was 1.7e-4 (3e-6 .. 1.7e-4), and 2.1e-4 over 1000 steps. 1e-3 (the
# loss's third significant digit) sits 5x above that. A wrong mask is caught
# much earlier by the first-step check: a sliding window one position too
# short already differs by 6e-5 at the first step (and by 1e-3 after 40
# steps), a causal mask instead of the window by 4e-4.
COMPARE_RTOL = 1e-3
# The first step uses identical parameters and batches: the losses differ only
# by the attention's rounding (~1e-7 measured).
FIRST_STEP_RTOL = 1e-5


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (the command-line options).

    Attributes:
      mask: ``"causal"``, ``"sliding"`` or ``"chunkwise"``.
      window: sliding window: keys ``q - window .. q`` are attended.
      chunk: chunkwise: chunk length.
      back: chunkwise: preceding chunks attended.
      steps: optimizer steps.
      batch: sequences per batch.
      seq: sequence length (tokens).
      layers: Transformer blocks.
      dim: model width.
      heads: attention heads (``dim % heads == 0``).
      lr: peak learning rate (linear warm-up, cosine decay to ``lr / 10``).
      seed: seed of the parameter initialisation and of the batch sampling.
      implementation: ``implementation=`` of :func:`chill_jax.attention`
        (None: triton on a CUDA GPU, else xla).
    """

    mask: str = "sliding"
    window: int = 64
    chunk: int = 32
    back: int = 1
    steps: int = 400
    batch: int = 16
    seq: int = 128
    layers: int = 2
    dim: int = 128
    heads: int = 4
    lr: float = 3e-3
    seed: int = 0
    implementation: str | None = None


def load_corpus() -> tuple[np.ndarray, list[str]]:
    """The CPython documentation topics as character ids.

    Returns:
      ``(tokens, vocab)``: int32 ids of every character of the text (topics
      in sorted order, separated by blank lines) and the sorted list of
      distinct characters (``vocab[i]`` is the character of id ``i``).
    """
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[name] for name in sorted(topics))
    vocab = sorted(set(text))
    index = {ch: i for i, ch in enumerate(vocab)}
    return np.fromiter((index[ch] for ch in text), np.int32, len(text)), vocab


def make_chill_mask(cfg: TrainConfig) -> chill_jax.ChillMask:
    """The :class:`chill_jax.ChillMask` selected by ``cfg.mask``.

    Args:
      cfg: the run's configuration.

    Returns:
      ``CausalChillMask()``, ``SlidingWindowChillMask(cfg.window, 0)`` (causal
      window) or ``ChunkwiseChillMask(cfg.chunk, cfg.back)``.
    """
    if cfg.mask == "causal":
        return chill_jax.CausalChillMask()
    if cfg.mask == "sliding":
        return chill_jax.SlidingWindowChillMask(left_context=cfg.window, right_context=0)
    if cfg.mask == "chunkwise":
        return chill_jax.ChunkwiseChillMask(context_size=cfg.chunk, back_contexts=cfg.back)
    raise ValueError(f"unknown mask {cfg.mask!r}; expected one of {MASKS}")


def make_dense_mask(cfg: TrainConfig) -> np.ndarray:
    """The dense bool ``[seq, seq]`` mask equivalent to :func:`make_chill_mask`.

    Built with NumPy from the masks' definitions, independently of chill-jax.

    Args:
      cfg: the run's configuration.

    Returns:
      ``allowed[q, k]``: whether query position ``q`` may attend to key ``k``.
    """
    q = np.arange(cfg.seq)[:, None]
    k = np.arange(cfg.seq)[None, :]
    if cfg.mask == "causal":
        return k <= q
    if cfg.mask == "sliding":
        return (k <= q) & (q - k <= cfg.window)
    if cfg.mask == "chunkwise":
        q_chunk, k_chunk = q // cfg.chunk, k // cfg.chunk
        return (k_chunk <= q_chunk) & (k_chunk >= q_chunk - cfg.back)
    raise ValueError(f"unknown mask {cfg.mask!r}; expected one of {MASKS}")


def make_dense_attention_fn(allowed: np.ndarray) -> Callable:
    """An ``attention_fn`` for ``nnx.MultiHeadAttention`` running
    ``jax.nn.dot_product_attention`` with a fixed dense boolean mask.

    Args:
      allowed: bool ``[T, S]``, the pairs that may attend.

    Returns:
      ``attention_fn(query, key, value, **flax_kwargs)`` on
      ``[batch, length, heads, head_dim]`` arrays.
    """
    dense = jnp.asarray(allowed)[None, None]

    def attention_fn(query, key, value, **unused_flax_kwargs):
        return jax.nn.dot_product_attention(query, key, value, mask=dense, implementation="xla")

    return attention_fn


class Block(nnx.Module):
    """A pre-LayerNorm Transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``.

    Args:
      dim: model width.
      heads: attention heads.
      attention_fn: the attention function of ``nnx.MultiHeadAttention``.
      rngs: parameter initialisation streams.
    """

    def __init__(self, dim: int, heads: int, attention_fn: Callable, *, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(dim, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=dim, attention_fn=attention_fn,
                                           decode=False, keep_rngs=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(dim, rngs=rngs)
        self.fc1 = nnx.Linear(dim, 4 * dim, rngs=rngs)
        self.fc2 = nnx.Linear(4 * dim, dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(jax.nn.gelu(self.fc1(self.ln2(x))))


class TransformerLM(nnx.Module):
    """A decoder-only Transformer language model with a tied output head.

    Args:
      vocab: vocabulary size.
      seq: maximum sequence length (learned position embeddings).
      dim: model width.
      heads: attention heads per block.
      layers: number of blocks.
      attention_fn: the attention function of every block.
      rngs: parameter initialisation streams.
    """

    def __init__(self, vocab: int, seq: int, dim: int, heads: int, layers: int, attention_fn: Callable, *,
                 rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        self.tok = nnx.Embed(vocab, dim, embedding_init=init, rngs=rngs)
        self.pos = nnx.Embed(seq, dim, embedding_init=init, rngs=rngs)
        self.blocks = nnx.List([Block(dim, heads, attention_fn, rngs=rngs) for _ in range(layers)])
        self.ln_f = nnx.LayerNorm(dim, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """Next-token logits ``[batch, length, vocab]`` of int ``[batch, length]`` tokens."""
        x = self.tok(tokens) + self.pos(jnp.arange(tokens.shape[-1]))
        for block in self.blocks:
            x = block(x)
        return self.tok.attend(self.ln_f(x))


def sample_batches(tokens: np.ndarray, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Every step's inputs and targets, drawn from ``cfg.seed``.

    Args:
      tokens: int32 ids of the corpus.
      cfg: the run's configuration.

    Returns:
      ``(inputs, targets)``, int32 ``[steps, batch, seq]`` each; the targets
      are the inputs shifted by one position.
    """
    rng = np.random.default_rng(cfg.seed)
    starts = rng.integers(0, len(tokens) - cfg.seq - 1, (cfg.steps, cfg.batch))
    windows = starts[..., None] + np.arange(cfg.seq + 1)
    chunks = tokens[windows]
    return chunks[..., :-1], chunks[..., 1:]


def train(cfg: TrainConfig, attention_fn: Callable | None = None, *, progress: bool = True,
          desc: str = "train") -> np.ndarray:
    """Trains the language model and returns its loss at every step.

    Args:
      cfg: the run's configuration.
      attention_fn: the blocks' attention; default
        ``chill_jax.make_attention_fn(make_chill_mask(cfg))`` (with
        ``implementation=cfg.implementation`` when set).
      progress: show a tqdm progress bar with the running loss.
      desc: the progress bar's label.

    Returns:
      float32 ``[steps]``: the training loss (mean cross-entropy, nats per
      character) before each step's update.
    """
    if attention_fn is None:
        options = {} if cfg.implementation is None else {"implementation": cfg.implementation}
        attention_fn = chill_jax.make_attention_fn(make_chill_mask(cfg), **options)
    tokens, vocab = load_corpus()
    inputs, targets = sample_batches(tokens, cfg)

    model = TransformerLM(len(vocab), cfg.seq, cfg.dim, cfg.heads, cfg.layers, attention_fn,
                          rngs=nnx.Rngs(cfg.seed))
    graphdef, params = nnx.split(model, nnx.Param)
    warmup = max(1, min(50, cfg.steps // 10))
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, max(cfg.steps, warmup + 1),
                                                  end_value=cfg.lr / 10)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
    opt_state = tx.init(params)

    def loss_fn(params, x, y):
        logits = nnx.merge(graphdef, params)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def train_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    bar = tqdm(range(cfg.steps), desc=desc, disable=not progress, dynamic_ncols=True)
    for step in bar:
        params, opt_state, loss = train_step(params, opt_state, inputs[step], targets[step])
        losses.append(loss)
        if step % 10 == 9 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{float(np.mean(jax.device_get(losses[-10:]))):.3f}")
    bar.close()
    return np.asarray(jax.device_get(losses), np.float32)


def _average(losses: np.ndarray, first: bool) -> tuple[float, int]:
    """Mean of the first or last ``n`` losses, ``n = clamp(steps // 10, 1, 5)``."""
    n = int(np.clip(len(losses) // 10, 1, 5))
    part = losses[:n] if first else losses[-n:]
    return float(np.mean(part)), n


def _parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        description="Train a small character-level Transformer LM (Flax NNX + optax) on CPython's "
                    "pydoc_data.topics with chill-jax sparse attention.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument(
        "--mask", choices=MASKS, default=defaults.mask,
        help="attention mask. causal: CausalChillMask(); sliding: SlidingWindowChillMask(left=WINDOW, "
             "right=0), a causal window; chunkwise: ChunkwiseChillMask(CHUNK, BACK), causal across chunks "
             "but bidirectional inside a chunk, so a position also sees the later tokens of its own chunk, "
             "i.e. the very targets it is asked to predict: the loss then falls towards 0 by copying and "
             "means nothing. For next-token prediction prefer causal or sliding; to get chunked (blockwise "
             "local) attention in a language model, combine the two conditions in a custom ChillMask whose "
             "mask() is the chunkwise condition AND k <= q (with k_range_for_q's upper end min(q, ...)), "
             "see examples/custom_mask.py, or keep the chunkwise mask for a bidirectional encoder or "
             "prefix")
    parser.add_argument("--window", type=int, default=defaults.window,
                        help="sliding: each position attends to itself and the WINDOW positions before it")
    parser.add_argument("--chunk", type=int, default=defaults.chunk, help="chunkwise: chunk length")
    parser.add_argument("--back", type=int, default=defaults.back,
                        help="chunkwise: number of preceding chunks attended")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps")
    parser.add_argument("--batch", type=int, default=defaults.batch, help="sequences per batch")
    parser.add_argument("--seq", type=int, default=defaults.seq, help="sequence length (characters)")
    parser.add_argument("--layers", type=int, default=defaults.layers, help="Transformer blocks")
    parser.add_argument("--dim", type=int, default=defaults.dim, help="model width")
    parser.add_argument("--heads", type=int, default=defaults.heads, help="attention heads")
    parser.add_argument("--lr", type=float, default=defaults.lr,
                        help="peak AdamW learning rate (warm-up, then cosine decay to LR/10)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="seed of the initialisation and of the batches")
    parser.add_argument("--implementation", choices=("triton", "interpret", "xla"),
                        default=defaults.implementation,
                        help="chill_jax.attention implementation (default: triton on a CUDA GPU, else xla)")
    parser.add_argument("--compare", action="store_true",
                        help="also train with jax.nn.dot_product_attention and the equivalent dense mask "
                             "(same initialisation and batches) and fail if the loss curves disagree")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parses the command line, trains, reports; returns the exit status.

    Args:
      argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
      0, or 1 when ``--compare`` finds the loss curves disagreeing.
    """
    args = _parser().parse_args(argv)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{name: value for name, value in vars(args).items() if name in fields})
    if cfg.dim % cfg.heads:
        raise SystemExit(f"--dim {cfg.dim} must be divisible by --heads {cfg.heads}")
    mask = make_chill_mask(cfg)
    tokens, vocab = load_corpus()
    print(f"JAX backend: {jax.default_backend()}; corpus: pydoc_data.topics, {len(tokens):,} characters, "
          f"vocabulary {len(vocab)} (uniform loss ln {len(vocab)} = {np.log(len(vocab)):.2f})")
    print(f"mask: {mask!r}; model: {cfg.layers} layers, dim {cfg.dim}, {cfg.heads} heads; "
          f"{cfg.steps} steps of {cfg.batch} x {cfg.seq} characters")
    if cfg.mask == "chunkwise":
        print("note: chunkwise attention lets a position see the later tokens of its own chunk, so the "
              "next-token loss below is optimistic (see --help)")

    start = time.perf_counter()
    losses = train(cfg, desc="chill_jax")
    elapsed = time.perf_counter() - start
    first, n = _average(losses, first=True)
    last, _ = _average(losses, first=False)
    print(f"chill_jax: loss {first:.4f} (mean of the first {n} steps) -> {last:.4f} (mean of the last {n}); "
          f"{elapsed:.1f} s including compilation")
    if not args.compare:
        return 0

    dense = make_dense_mask(cfg)
    if not np.array_equal(dense, mask.make_mask(cfg.seq)):
        print(f"FAIL: the NumPy dense mask differs from {mask!r}.make_mask({cfg.seq})")
        return 1
    start = time.perf_counter()
    reference = train(cfg, make_dense_attention_fn(dense), desc="dense")
    elapsed = time.perf_counter() - start
    ref_first, _ = _average(reference, first=True)
    ref_last, _ = _average(reference, first=False)
    print(f"dense:     loss {ref_first:.4f} -> {ref_last:.4f}; {elapsed:.1f} s including compilation")

    diff = np.abs(losses.astype(np.float64) - reference)
    rel = diff / np.abs(reference)
    worst = int(np.argmax(rel))
    marks = sorted({0, *range(0, cfg.steps, max(1, cfg.steps // 8)), cfg.steps - 1})
    print("step   chill_jax      dense          |diff|")
    for step in marks:
        print(f"{step:5d}  {losses[step]:.7f}  {reference[step]:.7f}  {diff[step]:.2e}")
    print(f"max |diff| {diff.max():.3e} (step {int(np.argmax(diff))}); max relative {rel[worst]:.3e} "
          f"(step {worst}); first step relative {rel[0]:.3e}")
    if rel[0] > FIRST_STEP_RTOL or rel[worst] > COMPARE_RTOL:
        print(f"FAIL: the loss curves disagree (tolerances: first step {FIRST_STEP_RTOL:g}, "
              f"whole run {COMPARE_RTOL:g} relative)")
        return 1
    print(f"OK: the loss curves agree within {COMPARE_RTOL:g} relative (first step within {FIRST_STEP_RTOL:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
