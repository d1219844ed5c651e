"""LoRA adapters, the testbed style, latent consistency distillation and the shipped LoRAs."""

import copy

import numpy as np
import pytest
import torch

from lib.diffusion import consistency_distillation as lcd
from lib.diffusion.lora_adapters import (
    ATTENTION_TARGETS,
    LoraAdapter,
    add_lora,
    lora_config,
    set_mix,
)
from lib.diffusion.testbed import loader, models
from lib.diffusion.testbed.data import generate
from lib.diffusion.testbed.train_lora import style_score, stylise


def _unet():
    torch.manual_seed(0)
    return models.unet().eval()


def _out(unet, x, states):
    with torch.no_grad():
        return unet(x, torch.tensor([500]), encoder_hidden_states=states).sample


def test_adapter_roundtrip_and_mixing(tmp_path):
    base = _unet()
    x, states = torch.randn(2, 4, 8, 8), torch.randn(2, 16, 64)
    tuned = copy.deepcopy(base)
    params = add_lora(tuned, "a", lora_config(2))
    assert params and all(p.requires_grad for p in params)
    assert sum(p.requires_grad for p in tuned.parameters()) == len(params)
    # B starts at zero: the fresh adapter does not change the model.
    torch.testing.assert_close(_out(tuned, x, states), _out(base, x, states))
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
    adapter = LoraAdapter.from_model(tuned, "a")
    adapter.save_pretrained(tmp_path / "a")
    loaded = LoraAdapter.from_pretrained(tmp_path / "a").attach(copy.deepcopy(base), "a")
    torch.testing.assert_close(_out(loaded, x, states), _out(tuned, x, states),
                               atol=2e-3, rtol=0)  # float16 storage  # fmt: skip
    # Weight 0 on the only adapter gives the base model back; weight 1 the tuned one.
    set_mix(loaded, ["a"], [0.0])
    torch.testing.assert_close(_out(loaded, x, states), _out(base, x, states))
    set_mix(loaded, ["a"], [1.0])
    torch.testing.assert_close(_out(loaded, x, states), _out(tuned, x, states), atol=2e-3, rtol=0)


def test_adapter_bad_input(tmp_path):
    with pytest.raises(ValueError, match="rank"):
        lora_config(0)
    with pytest.raises(ValueError, match="targets"):
        lora_config(2, ())
    unet = _unet()
    add_lora(unet, "a", lora_config(2, ATTENTION_TARGETS))
    with pytest.raises(ValueError, match="already has"):
        add_lora(unet, "a", lora_config(2))
    with pytest.raises(ValueError, match="no adapter"):
        LoraAdapter.from_model(unet, "b")
    with pytest.raises(ValueError, match="missing"):
        LoraAdapter.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="weights"):
        set_mix(unet, ["a"], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least one"):
        LoraAdapter(lora_config(2), {})


def test_style_is_measurable_and_keeps_content():
    data = generate(64, seed=3)
    plain, styled = style_score(data.images), style_score(stylise(data.images))
    assert abs(plain.mean()) < 0.02 and styled.min() > 0.25
    # The middle rows (where the shapes are) only shift by the ramp: content is unchanged.
    assert np.allclose(stylise(data.images, 0.0), data.images)
    with pytest.raises(ValueError, match="amplitude"):
        stylise(data.images, 1.5)
    with pytest.raises(ValueError, match=r"\(n, 3, H, W\)"):
        style_score(np.zeros((2, 32, 32)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stylise(np.full((1, 3, 32, 32), 2.0))


def test_consistency_pieces():
    c_skip, c_out = lcd.boundary_scalings(torch.tensor([0, 19, 999]))
    assert c_skip[0] == 1 and c_out[0] == 0  # the boundary condition f(x, 0) = x
    torch.testing.assert_close(c_skip**2 * 0 + c_skip * 0.25 / c_skip, torch.full((3,), 0.25))
    assert c_skip[2] < 1e-6 and abs(c_out[2] - 1) < 1e-6
    grid = lcd.skipping_timesteps(1000, 50)
    assert grid[0] == 19 and grid[-1] == 999 and (grid.diff() == 20).all()
    sched = models.unet_scheduler("ddpm")
    z, eps, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([10, 400, 900])
    noisy = sched.add_noise(z, eps, t)
    torch.testing.assert_close(lcd.predicted_x0(eps, noisy, t, sched.alphas_cumprod), z,
                               atol=1e-4, rtol=1e-4)  # fmt: skip
    a, b = [torch.zeros(2)], [torch.ones(2)]
    lcd.ema_update(a, b, 0.95)
    torch.testing.assert_close(a[0], torch.full((2,), 0.05))
    with pytest.raises(ValueError, match="divide"):
        lcd.skipping_timesteps(1000, 3)
    with pytest.raises(ValueError, match="decay"):
        lcd.ema_update(a, b, 1.5)


def test_lcd_loss_trains_only_the_lora():
    teacher = _unet().requires_grad_(False)
    student = copy.deepcopy(teacher)
    params = add_lora(student, "lcm", lora_config(2))
    target = copy.deepcopy(student)
    z, states, empty = torch.randn(4, 4, 8, 8), torch.randn(4, 16, 64), torch.randn(1, 16, 64)
    gen = torch.Generator().manual_seed(0)
    loss = lcd.lcd_loss(student, target, teacher, z, states, empty,
                        models.unet_scheduler("ddpm").alphas_cumprod, generator=gen)  # fmt: skip
    loss.backward()
    assert loss.item() > 0 and any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert all(p.grad is None for p in teacher.parameters())
    with pytest.raises(ValueError, match="guidance"):
        lcd.lcd_loss(student, target, teacher, z, states, empty,
                     models.unet_scheduler("ddpm").alphas_cumprod, guidance=0.5)  # fmt: skip
    with pytest.raises(ValueError, match="text states"):
        lcd.lcd_loss(student, target, teacher, z, states[:2], empty,
                     models.unet_scheduler("ddpm").alphas_cumprod)  # fmt: skip
    with pytest.raises(ValueError, match="steps"):
        lcd.sample_lcm(student, None, states, steps=0)


@pytest.mark.parametrize("part", ["style_lora", "lcm_lora"])
def test_shipped_lora_hashes_and_load(part):
    manifest = loader.read_manifest()
    if part not in manifest["training"]:
        pytest.skip(f"{part} not trained yet")
    loader.verify(loader.WEIGHTS, manifest, [part])
    adapter = loader.load_component(loader.WEIGHTS, part, manifest)
    unet = adapter.attach(loader.load_component(loader.WEIGHTS, "unet", manifest), part)
    assert part in unet.peft_config
    size = sum(p.stat().st_size for p in (loader.WEIGHTS / loader.FOLDERS[part]).iterdir())
    assert size < 2e6
