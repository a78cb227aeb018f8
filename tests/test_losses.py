"""Set-prediction losses: targets from semantic maps, deep supervision, and they can be minimised."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("scipy")

from ds2a.train.losses import LossConfig, SetCriterion, dice_loss  # noqa: E402
from ds2a.train.optim import build_optimizer, lr_factor, param_groups  # noqa: E402
from ds2a.train.targets import semantic_to_instances  # noqa: E402


def test_targets_one_instance_per_present_class_ignoring_255() -> None:
    m = torch.tensor([[0, 0, 3], [255, 3, 3]])
    labels, masks = semantic_to_instances(m)
    assert labels.tolist() == [0, 3]
    assert masks[0].tolist() == [[1, 1, 0], [0, 0, 0]]
    assert masks[1].tolist() == [[0, 0, 1], [0, 1, 1]]


def test_dice_loss_zero_when_perfect_and_large_when_opposite() -> None:
    t = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    assert dice_loss(torch.tensor([[40.0, -40, 40, -40]]), t).item() == pytest.approx(0, abs=1e-6)
    assert dice_loss(torch.tensor([[-40.0, 40, -40, 40]]), t).item() > 0.6


def _learnable_heads(layers: int, b: int, q: int, k: int, hw: int):
    torch.manual_seed(0)
    return [(torch.zeros(b, q, k + 1, requires_grad=True), (0.1 * torch.randn(b, q, hw, hw)).requires_grad_())
            for _ in range(layers)]


def test_losses_decrease_when_overfitting_one_batch() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only wait on each other on a busy machine
    try:
        _overfit()
    finally:
        torch.set_num_threads(threads)


def _overfit() -> None:
    k = 3
    masks = torch.zeros(2, 32, 32, dtype=torch.long)
    masks[0, 8:20, 4:28] = 1
    masks[1, :, 20:] = 2
    masks[1, 0:4] = 255
    targets = [semantic_to_instances(m) for m in masks]
    heads = _learnable_heads(2, 2, 6, k, 8)
    crit = SetCriterion(LossConfig(num_classes=k, num_points=256))
    opt = torch.optim.Adam([t for pair in heads for t in pair], lr=0.1)
    first = None
    for _ in range(60):
        losses = crit(heads, targets)
        first = first or {n: float(v.detach()) for n, v in losses.items()}
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    last = crit(heads, targets)
    for name in ("loss", "loss_cls", "loss_mask", "loss_dice"):
        assert float(last[name].detach()) < 0.5 * first[name], name


def test_every_head_is_supervised() -> None:
    k = 2
    targets = [semantic_to_instances(torch.tensor([[0, 1], [1, 1]]))]
    heads = _learnable_heads(3, 1, 4, k, 4)
    SetCriterion(LossConfig(num_classes=k, num_points=16))(heads, targets)["loss"].backward()
    assert all(c.grad.abs().sum() > 0 and m.grad.abs().sum() > 0 for c, m in heads)


def test_no_object_weight_makes_empty_queries_cheap() -> None:
    k = 2
    targets = [semantic_to_instances(torch.zeros(4, 4, dtype=torch.long))]
    cls = torch.zeros(1, 3, k + 1)
    masks = torch.zeros(1, 3, 4, 4)
    full = SetCriterion(LossConfig(num_classes=k, num_points=16, no_object_weight=1.0))([(cls, masks)], targets)
    low = SetCriterion(LossConfig(num_classes=k, num_points=16))([(cls, masks)], targets)
    # uniform logits: CE per query is log(3) whatever the weights; weighting changes only the mean's
    # normaliser, so equal values prove the weighted mean (mmdet's avg_factor = sum of weights)
    assert float(full["loss_cls"]) == pytest.approx(float(low["loss_cls"]))
    cls2 = cls.clone()
    cls2[0, 1:, k] = 5.0  # two queries confidently "no object", the matched one uniform
    a = SetCriterion(LossConfig(num_classes=k, num_points=16, no_object_weight=1.0))([(cls2, masks)], targets)
    b = SetCriterion(LossConfig(num_classes=k, num_points=16))([(cls2, masks)], targets)
    assert float(b["loss_cls"]) > float(a["loss_cls"])  # the unmatched (easy) queries count less


def test_param_groups_backbone_lr_and_no_decay_on_norms_and_embeddings() -> None:
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
            self.query_feat = nn.Embedding(4, 8)
            self.level_embed = nn.Parameter(torch.zeros(3, 8))
            self.head = nn.Linear(8, 8)
            self.norm = nn.LayerNorm(8)

    net = Net()
    net.backbone[1].weight.requires_grad_(False)
    groups = {(round(g["lr"], 9), g["weight_decay"]): sorted(g["names"]) for g in param_groups(net, 1e-4, 0.05)}
    assert groups == {
        (1e-4, 0.05): ["head.bias", "head.weight"],
        (1e-4, 0.0): ["level_embed", "norm.bias", "norm.weight", "query_feat.weight"],
        (1e-5, 0.05): ["backbone.0.bias", "backbone.0.weight"],
        (1e-5, 0.0): ["backbone.1.bias"],  # the frozen BN weight is left out
    }
    opt = build_optimizer(net)
    assert all("initial_lr" in g for g in opt.param_groups)


def test_poly_schedule_with_warmup() -> None:
    assert lr_factor(0, 100) == 1.0
    assert lr_factor(50, 100) == pytest.approx(0.5**0.9)
    assert lr_factor(100, 100) == 0.0
    assert lr_factor(0, 100, warmup_iters=10, warmup_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(5, 100, warmup_iters=10, warmup_ratio=0.1) < lr_factor(10, 100, warmup_iters=10)
