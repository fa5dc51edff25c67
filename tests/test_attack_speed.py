"""Attacks run with the model's weights frozen: same adversarial examples, no weight gradients.

CW, FAB (inside AutoAttack) and torchattacks' DeepFool call ``loss.backward()``, which also
differentiates every weight; :func:`input_gradients_only` freezes the weights during the attack
so autograd skips that work. These tests hold the claim that it changes nothing else: the
adversarial images are bit for bit those of the unfrozen model, on a BEARD checkpoint and real
CIFAR-10 test images, and the model comes back as it was.
"""

import pytest
import torch

from rome_bench.attacks.suite import ATTACKS, attack_view, build_attack, run_attack
from rome_bench.attacks.timing import input_gradients_only
from rome_bench.data.datasets import load_dataset, take_test_subset


@pytest.fixture(scope="module")
def images():
    test = take_test_subset(load_dataset("cifar10-mini", "test"), 10)
    return test.images, test.labels


# CW and FAB call loss.backward(); torchattacks' DeepFool backpropagates each logit.
CASES = [("CW", {"steps": 5}), ("DeepFool-ta", {"steps": 3}),
         ("AutoAttack", {"square_queries": 20})]


@pytest.mark.parametrize("threat_model", ["standard", "beard-compat"])
@pytest.mark.parametrize(("name", "overrides"), CASES, ids=[c[0] for c in CASES])
def test_frozen_weights_give_bit_identical_adversarial_examples(dc_model, images, name, overrides,
                                                                threat_model):
    x, y = images
    view = attack_view(dc_model.eval(), threat_model, 10)
    spec = ATTACKS.get(name)

    def attack() -> torch.Tensor:
        torch.manual_seed(0)
        atk = build_attack(spec, view.model, threat_model=threat_model, overrides=overrides)
        return atk(view.to_input(x), y)

    for p in dc_model.parameters():
        p.grad = None
    unfrozen = attack()
    # the unfrozen attack computed weight gradients: the work that freezing saves (AutoAttack
    # reaches FAB's backward only for images its APGD runs left robust)
    if name != "AutoAttack":
        assert any(p.grad is not None for p in dc_model.parameters())
    for p in dc_model.parameters():
        p.grad = None
    with input_gradients_only(dc_model):
        frozen = attack()
    assert torch.equal(frozen, unfrozen)
    assert all(p.grad is None for p in dc_model.parameters())


def test_run_attack_leaves_no_weight_gradients_and_restores_flags(dc_model, images):
    x, y = images
    flags = [p.requires_grad for p in dc_model.parameters()]
    assert all(flags)
    for p in dc_model.parameters():
        p.grad = None
    res = run_attack(ATTACKS.get("CW"), dc_model, x, y, mode="untargeted",
                     overrides={"steps": 5})
    assert res.n_images == len(y)
    assert [p.requires_grad for p in dc_model.parameters()] == flags
    assert all(p.grad is None for p in dc_model.parameters())


def test_flags_are_restored_when_the_attack_raises(dc_model):
    first = next(dc_model.parameters())
    first.requires_grad_(False)  # a mixed model: one frozen layer
    flags = [p.requires_grad for p in dc_model.parameters()]
    with pytest.raises(RuntimeError, match="boom"), input_gradients_only(dc_model):
        assert not any(p.requires_grad for p in dc_model.parameters())
        raise RuntimeError("boom")
    assert [p.requires_grad for p in dc_model.parameters()] == flags
    first.requires_grad_(True)
