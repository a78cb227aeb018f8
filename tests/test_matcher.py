"""Hungarian matching picks the cheapest one-to-one query/target assignment (Mask2Former costs)."""
from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("scipy")

from ds2a.train.matcher import MatchCosts, cost_matrix, hungarian_match, pairwise_dice  # noqa: E402
from ds2a.train.points import point_sample, uncertain_point_coords  # noqa: E402


def _square_masks(n: int, size: int = 16) -> torch.Tensor:
    masks = torch.zeros(n, size, size)
    for i in range(n):
        masks[i, :, i * (size // n):(i + 1) * (size // n)] = 1
    return masks


def test_finds_the_planted_permutation() -> None:
    torch.manual_seed(0)
    gt_masks = _square_masks(3)
    gt_labels = torch.tensor([2, 0, 1])
    perm = [3, 0, 2]  # query perm[j] predicts target j
    q, k = 5, 3
    mask_logits = torch.full((q, 16, 16), -8.0)
    cls_logits = torch.zeros(q, k + 1)
    for j, qi in enumerate(perm):
        mask_logits[qi] = gt_masks[j] * 16 - 8
        cls_logits[qi, gt_labels[j]] = 6.0
    rows, cols = hungarian_match(cls_logits, mask_logits, gt_labels, gt_masks, MatchCosts(num_points=256))
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 3, 1: 0, 2: 2}


def test_matches_brute_force_minimum_on_random_costs() -> None:
    for seed in range(4):
        torch.manual_seed(seed)
        q, n = 5, 3
        cls_logits = torch.randn(q, 4)
        mask_logits = torch.randn(q, 8, 8)
        gt_masks = (torch.rand(n, 16, 16) > 0.5).float()
        gt_labels = torch.randint(0, 3, (n,))
        costs = MatchCosts(num_points=64)
        torch.manual_seed(100)
        c = cost_matrix(cls_logits, mask_logits, gt_labels, gt_masks, costs)
        best = min(sum(c[p[j], j].item() for j in range(n)) for p in itertools.permutations(range(q), n))
        torch.manual_seed(100)  # the same sampled points inside the matcher
        rows, cols = hungarian_match(cls_logits, mask_logits, gt_labels, gt_masks, costs)
        assert c[rows, cols].sum().item() == pytest.approx(best, abs=1e-5)
        assert len(set(rows.tolist())) == n


def test_no_targets_gives_empty_match() -> None:
    rows, cols = hungarian_match(torch.randn(4, 3), torch.randn(4, 8, 8), torch.zeros(0, dtype=torch.long),
                                 torch.zeros(0, 8, 8))
    assert rows.numel() == 0 and cols.numel() == 0


def test_pairwise_dice_is_zero_for_a_perfect_mask() -> None:
    t = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    logits = torch.tensor([[50.0, 50.0, -50.0, -50.0], [-50.0, -50.0, 50.0, 50.0]])
    d = pairwise_dice(logits, t)
    assert d[0, 0].item() == pytest.approx(0.0, abs=1e-6) and d[1, 0].item() > 0.6


def test_point_sample_reads_pixel_centres() -> None:
    img = torch.arange(16.0).view(1, 1, 4, 4)
    coords = torch.tensor([[[0.125, 0.125], [0.875, 0.375]]])  # (x, y) of pixels (0,0) and (row 1, col 3)
    assert point_sample(img, coords)[0, 0].tolist() == [0.0, 7.0]


def test_uncertain_points_prefer_the_decision_boundary() -> None:
    torch.manual_seed(0)
    logits = torch.full((1, 1, 32, 32), 10.0)
    logits[..., :, 14:18] = 0.0  # uncertain band: x in [14/32, 18/32)
    pts = uncertain_point_coords(logits, num_points=400, oversample_ratio=3, importance_sample_ratio=0.75)
    assert pts.shape == (1, 400, 2)
    in_band = ((pts[0, :, 0] > 13 / 32) & (pts[0, :, 0] < 19 / 32)).float().mean().item()
    assert in_band > 0.5  # uniform sampling would put ~19 % there
