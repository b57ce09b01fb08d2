# Copyright 2026 The chill-jax Authors. SPDX-License-Identifier: Apache-2.0
"""Custom masks used by the tests.

Triton reads a mask method's source, so these classes must live in a real
module rather than in a test's body. Some of them are deliberately wrong, to
check that ``ChillMask.verify`` catches each kind of mistake.
"""

import triton.language as tl

from chill_jax import ChillMask


class LocalWindowMask(ChillMask):
    """A sliding window written the way the PyTorch library's README writes one.

    ``mask`` takes three parameters (no ``seq_len``), the range methods use the
    builtin ``max``/``min``, the constructor passes the constants through
    unchecked, and the methods carry the README's type annotations.

    Args:
      left_context: keys before the query that it attends.
      right_context: keys after the query that it attends.
    """

    def __init__(self, left_context, right_context):
        super().__init__((left_context, right_context))

    @staticmethod
    def mask(q: tl.tensor, k: tl.tensor, args) -> tl.tensor:
        """Whether query ``q[i]`` attends to key ``k[j]``."""
        left_context, right_context = args
        offset = k[None, :] - q[:, None]
        return (offset >= -left_context) & (offset <= right_context)

    @staticmethod
    def q_range_for_k(k: int, seq_len: tl.tensor, args) -> tuple[tl.tensor, tl.tensor]:
        """Queries that attend to key ``k``."""
        left_context, right_context = args
        return max(0, k - right_context), min(k + left_context, seq_len - 1)

    @staticmethod
    def k_range_for_q(q: int, seq_len: tl.tensor, args) -> tuple[tl.tensor, tl.tensor]:
        """Keys that query ``q`` attends to."""
        left_context, right_context = args
        return max(0, q - left_context), min(q + right_context, seq_len - 1)


class ShiftedCausalMask(ChillMask):
    """Query ``q`` attends to keys ``k <= q - offset``: the first ``offset``
    queries have no allowed key at all.

    Args:
      offset: how far behind the query the newest allowed key is.
    """

    def __init__(self, offset):
        super().__init__((offset,))

    @staticmethod
    def mask(q, k, seq_len, args):
        (offset,) = args
        return k[None, :] <= q[:, None] - offset

    @staticmethod
    def k_range_for_q(q, seq_len, args):
        (offset,) = args
        return 0, q - offset

    @staticmethod
    def q_range_for_k(k, seq_len, args):
        (offset,) = args
        return k + offset, seq_len - 1


class LastKeysMask(ChillMask):
    """Every query attends to the last ``count`` keys of its example, so the
    mask depends on the ``seq_len`` it receives (the example's key length).

    Args:
      count: how many of the last keys are attended.
    """

    def __init__(self, count):
        super().__init__((count,))

    @staticmethod
    def mask(q, k, seq_len, args):
        (count,) = args
        return (k[None, :] >= seq_len - count) & (q[:, None] >= 0)

    @staticmethod
    def k_range_for_q(q, seq_len, args):
        (count,) = args
        return max(0, seq_len - count), seq_len - 1

    @staticmethod
    def q_range_for_k(k, seq_len, args):
        return 0, seq_len - 1


class DilatedWindowMask(ChillMask):
    """Sliding window keeping every ``dilation``-th key; three constants.

    Args:
      left: keys before the query.
      right: keys after the query.
      dilation: distance between attended keys.
    """

    def __init__(self, left, right, dilation):
        super().__init__((left, right, dilation))

    @staticmethod
    def mask(q, k, args):
        left, right, dilation = args
        diff = q[:, None] - k[None, :]
        return (diff <= left) & (diff >= -right) & (diff % dilation == 0)

    @staticmethod
    def k_range_for_q(q, seq_len, args):
        left, right, dilation = args
        return max(0, q - left), min(q + right, seq_len - 1)

    @staticmethod
    def q_range_for_k(k, seq_len, args):
        left, right, dilation = args
        return max(0, k - right), min(k + left, seq_len - 1)


class ModuloMask(ChillMask):
    """Query ``q`` attends to keys ``k <= q % period``.

    The key range ``(0, q % period)`` is exact but drops at every multiple of
    ``period``, so it is not continuous; this class keeps the default
    ``k_lims_continuous() == True`` and is therefore wrong.

    Args:
      period: the period of the pattern.
    """

    def __init__(self, period):
        super().__init__((period,))

    @staticmethod
    def mask(q, k, args):
        (period,) = args
        return k[None, :] <= q[:, None] % period

    @staticmethod
    def k_range_for_q(q, seq_len, args):
        (period,) = args
        return 0, q % period

    @staticmethod
    def q_range_for_k(k, seq_len, args):
        return k, seq_len - 1


class DiscontinuousModuloMask(ModuloMask):
    """:class:`ModuloMask` declaring its key ranges discontinuous (correct)."""

    @staticmethod
    def k_lims_continuous():
        return False


class NarrowKRangeMask(ChillMask):
    """Sliding window whose ``k_range_for_q`` misses the oldest allowed key.

    Args:
      left: keys before the query.
      right: keys after the query.
    """

    def __init__(self, left, right):
        super().__init__((left, right))

    @staticmethod
    def mask(q, k, args):
        left, right = args
        diff = q[:, None] - k[None, :]
        return (diff <= left) & (diff >= -right)

    @staticmethod
    def k_range_for_q(q, seq_len, args):
        left, right = args
        return max(0, q - left + 1), min(q + right, seq_len - 1)

    @staticmethod
    def q_range_for_k(k, seq_len, args):
        left, right = args
        return max(0, k - right), min(k + left, seq_len - 1)


class NarrowQRangeMask(ChillMask):
    """Causal mask whose ``q_range_for_k`` misses the diagonal query."""

    def __init__(self):
        super().__init__(())

    @staticmethod
    def mask(q, k, args):
        return q[:, None] >= k[None, :]

    @staticmethod
    def k_range_for_q(q, seq_len, args):
        return 0, q

    @staticmethod
    def q_range_for_k(k, seq_len, args):
        return k + 1, seq_len - 1


class OverclaimingCausalMask(ChillMask):
    """Causal mask whose ``is_full_block`` also claims the diagonal tiles."""

    def __init__(self):
        super().__init__(())

    @staticmethod
    def mask(q, k, args):
        return q[:, None] >= k[None, :]

    @staticmethod
    def k_range_for_q(q, seq_len, args):
        return 0, q

    @staticmethod
    def q_range_for_k(k, seq_len, args):
        return k, seq_len - 1

    @staticmethod
    def has_full_blocks(q_tile, k_tile, seq_len, args):
        return True

    @staticmethod
    def is_full_block(q, k, q_tile, k_tile, seq_len, args):
        return k <= q


class MissingRangeMask(ChillMask):
    """Lacks the required ``q_range_for_k``."""

    def __init__(self):
        super().__init__(())

    @staticmethod
    def mask(q, k, args):
        return q[:, None] >= k[None, :]

    @staticmethod
    def k_range_for_q(q, seq_len, args):
        return 0, q


class WrongArityMask(ChillMask):
    """``k_range_for_q`` takes two parameters instead of three."""

    def __init__(self):
        super().__init__(())

    @staticmethod
    def mask(q, k, args):
        return q[:, None] >= k[None, :]

    @staticmethod
    def k_range_for_q(q, args):
        return 0, q

    @staticmethod
    def q_range_for_k(k, seq_len, args):
        return k, seq_len - 1


class RadiusMask(ChillMask):
    """Keys within a float ``radius`` of the query, optionally only earlier
    ones; an int bound for the ranges. Constants of all three types.

    Args:
      bound: int, at least ``floor(radius)``.
      radius: float distance.
      causal: bool, whether later keys are excluded.
    """

    def __init__(self, bound, radius, causal):
        super().__init__((bound, radius, causal))

    @staticmethod
    def mask(q, k, args):
        bound, radius, causal = args
        diff = (q[:, None] - k[None, :]).to(tl.float32)
        allowed = (diff <= radius) & (diff >= -radius)
        if causal:
            allowed = allowed & (diff >= 0)
        return allowed

    @staticmethod
    def k_range_for_q(q, seq_len, args):
        bound, radius, causal = args
        return max(0, q - bound), min(q + bound, seq_len - 1)

    @staticmethod
    def q_range_for_k(k, seq_len, args):
        bound, radius, causal = args
        return max(0, k - bound), min(k + bound, seq_len - 1)


class PerExampleWindowMask(ChillMask):
    """A causal sliding window whose size is a runtime array: query ``q`` of
    example ``b`` attends to keys ``q - window[b] <= k <= q``.

    Args:
      window: integer ``[B]`` (or ``[1]``) window sizes, >= 0.
    """

    def __init__(self, window):
        super().__init__((), {"window": window})

    @staticmethod
    def mask(q, k, args):
        (window_ptr,) = args
        window = tl.load(window_ptr)
        diff = q[:, None] - k[None, :]
        return (diff >= 0) & (diff <= window)

    @staticmethod
    def k_range_for_q(q, seq_len, args):
        (window_ptr,) = args
        window = tl.load(window_ptr)
        return max(0, q - window), min(q, seq_len - 1)

    @staticmethod
    def q_range_for_k(k, seq_len, args):
        (window_ptr,) = args
        window = tl.load(window_ptr)
        return k, min(k + window, seq_len - 1)


class KeyScoreMask(ChillMask):
    """Keys whose float score in a runtime ``[B, S]`` array reaches a constant
    threshold (a float array: it must get no gradient); every query may see
    any key, so the ranges are the whole sequence.

    Args:
      scores: float ``[B, S]`` per-key scores.
      threshold: float constant.
    """

    def __init__(self, scores, threshold):
        super().__init__((threshold,), {"scores": scores})

    @staticmethod
    def mask(q, k, seq_len, args):
        threshold, scores = args
        keep = tl.load(scores + k, mask=k < seq_len, other=-1e30) >= threshold
        return keep[None, :] & (q[:, None] >= 0)

    @staticmethod
    def k_range_for_q(q, seq_len, args):
        return 0, seq_len - 1

    @staticmethod
    def q_range_for_k(k, seq_len, args):
        return 0, seq_len - 1


class CastWindowMask(PerExampleWindowMask):
    """:class:`PerExampleWindowMask` whose ``mask`` uses ``tl.cast``, which
    the xla implementation's shim lacks: it falls back to the interpreter."""

    @staticmethod
    def mask(q, k, args):
        (window_ptr,) = args
        window = tl.cast(tl.load(window_ptr), tl.int32)
        diff = q[:, None] - k[None, :]
        return (diff >= 0) & (diff <= window)
