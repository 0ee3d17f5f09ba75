"""Landmark conditioning (ablation C3): encoder, latent-frame grouping, per-frame added cross-attention."""

from __future__ import annotations

import pytest
import torch

from factorportrait.landmarks import (
    FrameCrossAttention,
    LandmarkEncoder,
    group_landmarks_by_latent_frame,
    latent_frame_count,
)

P = 238
DIM = 32  # encoder feature size (paper: 128), small so the tests stay fast
D = 48  # DiT hidden size stand-in
HEADS = 4


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _landmarks(b: int, t: int) -> torch.Tensor:  # [B, T, P, 2] in [-1, 1]
    return torch.rand(b, t, P, 2) * 2 - 1


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    # Not torch.testing.assert_close: its first call costs seconds (it imports dynamo).
    assert a.shape == b.shape
    return (a - b).abs().max().item()


def _trained_attention(context_dim: int = DIM) -> FrameCrossAttention:
    """A FrameCrossAttention with a non-zero output projection (as after training)."""
    attn = FrameCrossAttention(D, context_dim, HEADS)
    with torch.no_grad():
        torch.nn.init.normal_(attn.to_out.weight, std=0.1)
        torch.nn.init.normal_(attn.to_out.bias, std=0.1)
    return attn


def _naive_frame_attention(
    attn: FrameCrossAttention, x: torch.Tensor, ctx: torch.Tensor, frame_tokens: int
) -> torch.Tensor:
    """Independent reference: loop over samples and frames, per-head attention with an explicit softmax."""
    b, _, d = x.shape
    f = ctx.shape[1]
    hd = d // attn.heads
    out = torch.empty_like(x)
    for i in range(b):
        for j in range(f):
            tokens = x[i, j * frame_tokens : (j + 1) * frame_tokens]  # [h*w, D]
            q = attn.norm_q(attn.to_q(attn.norm(tokens)))
            k = attn.norm_k(attn.to_k(ctx[i, j]))  # [K, D]
            v = attn.to_v(ctx[i, j])
            heads = []
            for h in range(attn.heads):
                sl = slice(h * hd, (h + 1) * hd)
                weights = torch.softmax(q[:, sl] @ k[:, sl].T / hd**0.5, dim=-1)
                heads.append(weights @ v[:, sl])
            out[i, j * frame_tokens : (j + 1) * frame_tokens] = attn.to_out(torch.cat(heads, dim=-1))
    return out


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize(("t", "f_lat"), [(13, 4), (25, 7)])
def test_end_to_end_shapes(t: int, f_lat: int) -> None:
    assert latent_frame_count(t) == f_lat
    enc = LandmarkEncoder(num_points=P, dim=DIM, heads=HEADS, layers=2)
    feats = enc(_landmarks(2, t))
    assert feats.shape == (2, t, P, DIM)
    grouped = group_landmarks_by_latent_frame(feats)
    assert grouped.shape == (2, 1 + f_lat, P, DIM)
    assert torch.equal(grouped[:, 0], torch.zeros_like(grouped[:, 0]))  # reference frame: no landmarks

    h, w = 2, 3
    hidden = torch.randn(2, (1 + f_lat) * h * w, D)
    update = FrameCrossAttention(D, DIM, HEADS)(hidden, grouped, frame_tokens=h * w)
    assert update.shape == hidden.shape


# ---------------------------------------------------------------- zero-init, learnability


def test_fresh_cross_attention_is_exact_zero_and_learns() -> None:
    attn = FrameCrossAttention(D, DIM, HEADS)
    hidden = torch.randn(2, 3 * 4, D)
    ctx = torch.randn(2, 3, 5, DIM)
    update = attn(hidden, ctx, frame_tokens=4)
    assert torch.equal(update, torch.zeros_like(update))

    # A linear objective: its gradient w.r.t. the output is non-zero even at zero output.
    target = torch.randn_like(hidden)
    (attn(hidden, ctx, frame_tokens=4) * target).sum().backward()
    assert attn.to_out.weight.grad is not None and attn.to_out.weight.grad.abs().sum() > 0
    assert attn.to_out.bias.grad is not None and attn.to_out.bias.grad.abs().sum() > 0

    # Plain gradient descent by hand: constructing a torch.optim optimiser costs seconds (it imports dynamo).
    losses = []
    for _ in range(5):
        attn.zero_grad()
        loss = (attn(hidden, ctx, frame_tokens=4) - target).pow(2).mean()
        loss.backward()
        with torch.no_grad():
            for p in attn.parameters():
                p -= 0.5 * p.grad
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    after = attn(hidden, ctx, frame_tokens=4)
    assert after.abs().max() > 1e-3
    # Once to_out is non-zero, the query/key/value projections receive gradients too.
    attn.zero_grad()
    (attn(hidden, ctx, frame_tokens=4) * target).sum().backward()
    assert attn.to_k.weight.grad.abs().sum() > 0 and attn.to_q.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- locality, reference implementation


def test_cross_attention_matches_naive_loop_and_is_frame_local() -> None:
    attn = _trained_attention()
    b, f, k, frame_tokens = 2, 5, 7, 6
    hidden = torch.randn(b, f * frame_tokens, D)
    ctx = torch.randn(b, f, k, DIM)
    with torch.no_grad():
        fast = attn(hidden, ctx, frame_tokens)
        naive = _naive_frame_attention(attn, hidden, ctx, frame_tokens)
        assert _max_abs_diff(fast, naive) < 1e-5

        for changed in (0, 2, f - 1):
            ctx2 = ctx.clone()
            ctx2[:, changed] += torch.randn(b, k, DIM)
            fast2 = attn(hidden, ctx2, frame_tokens)
            assert _max_abs_diff(fast2, _naive_frame_attention(attn, hidden, ctx2, frame_tokens)) < 1e-5
            inside = slice(changed * frame_tokens, (changed + 1) * frame_tokens)
            assert not torch.allclose(fast2[:, inside], fast[:, inside])
            outside = torch.ones(f * frame_tokens, dtype=torch.bool)
            outside[inside] = False
            assert torch.equal(fast2[:, outside], fast[:, outside])  # other frames bit-identical


# ---------------------------------------------------------------- encoder mixing


def test_encoder_spatial_attention_mixes_points_within_a_frame() -> None:
    enc = LandmarkEncoder(num_points=P, dim=DIM, heads=HEADS, layers=2).eval()
    x = _landmarks(1, 5)
    x2 = x.clone()
    x2[0, 2, 10] += 0.5  # move point 10 in frame 2
    with torch.no_grad():
        y, y2 = enc(x), enc(x2)
    # Point 11 never moved in any frame: only spatial attention can carry point 10's change to it.
    assert not torch.allclose(y[0, 2, 11], y2[0, 2, 11])


def test_encoder_temporal_attention_mixes_frames_of_a_point() -> None:
    enc = LandmarkEncoder(num_points=P, dim=DIM, heads=HEADS, layers=2).eval()
    x = _landmarks(1, 5)
    x2 = x.clone()
    x2[0, 3, 10] += 0.5  # move point 10 in frame 3
    with torch.no_grad():
        y, y2 = enc(x), enc(x2)
    # Frame 0 is untouched: only temporal attention can carry frame 3's change to it.
    assert not torch.allclose(y[0, 0, 10], y2[0, 0, 10])


def test_encoder_steps_attend_along_the_right_axis() -> None:
    """The spatial step must keep frames independent and the temporal step points independent."""
    enc = LandmarkEncoder(num_points=P, dim=DIM, heads=HEADS, layers=1).eval()
    x = torch.randn(2, 5, P, DIM)
    x2 = x.clone()
    x2[1, 3, 10] += torch.randn(DIM)  # not a constant shift, which the pre-norm would remove
    with torch.no_grad():
        s, s2 = enc.mix_points(x, enc.spatial[0]), enc.mix_points(x2, enc.spatial[0])
        t, t2 = enc.mix_frames(x, enc.temporal[0]), enc.mix_frames(x2, enc.temporal[0])
    changed_s = (s - s2).abs().amax(dim=-1) > 0  # [B, T, P]
    changed_t = (t - t2).abs().amax(dim=-1) > 0
    expect_s = torch.zeros_like(changed_s)
    expect_s[1, 3] = True  # all points of frame 3 in sample 1, nothing else
    expect_t = torch.zeros_like(changed_t)
    expect_t[1, :, 10] = True  # all frames of point 10 in sample 1, nothing else
    assert torch.equal(changed_s, expect_s)
    assert torch.equal(changed_t, expect_t)


def test_encoder_distinguishes_points_and_frame_order() -> None:
    enc = LandmarkEncoder(num_points=P, dim=DIM, heads=HEADS, layers=1).eval()
    x = torch.zeros(1, 5, P, 2)  # every point at the same place in every frame
    with torch.no_grad():
        y = enc(x)
    assert not torch.allclose(y[0, 0, 0], y[0, 0, 1])  # learned per-point embedding
    assert not torch.allclose(y[0, 0, 0], y[0, 1, 0])  # frame-index encoding


# ---------------------------------------------------------------- grouping


@pytest.mark.parametrize("t", [1, 5, 13, 25])
def test_grouping_places_video_frames_in_the_right_latent_frames(t: int) -> None:
    # Channel c of frame t is 1 iff c == t: the pooled channels then reveal which frames went where.
    feats = torch.eye(t)[None, :, None, :].expand(2, t, 3, t).contiguous()  # [B, T, P=3, C=T]
    grouped = group_landmarks_by_latent_frame(feats)
    f_lat = latent_frame_count(t)
    assert grouped.shape == (2, 1 + f_lat, 3, t)
    expected = torch.zeros(1 + f_lat, t)
    expected[1, 0] = 1.0  # latent frame 0 = video frame 0 alone
    for j in range(1, f_lat):
        expected[1 + j, 4 * j - 3 : 4 * j + 1] = 0.25  # latent frame j = mean of video frames 4j-3 .. 4j
    assert torch.equal(grouped, expected[None, :, None, :].expand_as(grouped))


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("shape", [(2, 5, 237, 2), (2, 5, P, 3), (5, P, 2), (1, 2, 5, P, 2)])
def test_encoder_rejects_bad_shapes(shape: tuple[int, ...]) -> None:
    enc = LandmarkEncoder(num_points=P, dim=DIM, heads=HEADS, layers=1)
    with pytest.raises(ValueError, match=r"\[B, T, 238, 2\].*got \(" + ", ".join(map(str, shape))):
        enc(torch.zeros(shape))


def test_encoder_rejects_dim_not_divisible_by_heads() -> None:
    with pytest.raises(ValueError, match="divisible"):
        LandmarkEncoder(dim=30, heads=4)


@pytest.mark.parametrize("t", [2, 12, 14])
def test_grouping_rejects_frame_counts_not_1_plus_4k(t: int) -> None:
    with pytest.raises(ValueError, match=rf"1 \+ 4k frames \(e.g. 13, 25, 49, 81\); got {t}"):
        group_landmarks_by_latent_frame(torch.zeros(1, t, P, 4))


def test_grouping_rejects_non_4d() -> None:
    with pytest.raises(ValueError, match=r"\[B, T, P, C\]"):
        group_landmarks_by_latent_frame(torch.zeros(5, P, 4))


def test_cross_attention_rejects_bad_shapes() -> None:
    attn = FrameCrossAttention(D, DIM, HEADS)
    hidden = torch.randn(2, 3 * 4, D)
    ctx = torch.randn(2, 3, 5, DIM)
    with pytest.raises(ValueError, match=r"L=12 tokens, expected F \* frame_tokens = 3 \* 5 = 15"):
        attn(hidden, ctx, frame_tokens=5)
    with pytest.raises(ValueError, match=r"L=12 tokens, expected F \* frame_tokens = 2 \* 4 = 8"):
        attn(hidden, ctx[:, :2], frame_tokens=4)
    with pytest.raises(ValueError, match=r"hidden_states must have shape \[B, L, 48\]"):
        attn(torch.randn(2, 12, D + 1), ctx, frame_tokens=4)
    with pytest.raises(ValueError, match=r"context must have shape \[B, F, K, 32\]"):
        attn(hidden, torch.randn(2, 3, 5, DIM + 1), frame_tokens=4)
    with pytest.raises(ValueError, match=r"context must have shape"):
        attn(hidden, torch.randn(2, 15, DIM), frame_tokens=4)
    with pytest.raises(ValueError, match="batch mismatch"):
        attn(hidden, ctx[:1], frame_tokens=4)
    with pytest.raises(ValueError, match="divisible"):
        FrameCrossAttention(D, DIM, heads=5)
