import torch

from htl_ray.config import AugmentConfig
from htl_ray.data.augment import augment_batch


def _batch():
    torch.manual_seed(0)
    images = torch.rand(8, 3, 16, 16)
    masks = (images[:, :1] > 0.5).float()           # mask tied to the image's pixels
    return images, masks


def test_geometry_is_applied_identically_to_image_and_mask():
    images, masks = _batch()
    cfg = AugmentConfig(hflip=0.5, vflip=0.5, rotate90=0.5, brightness=0, contrast=0,
                        saturation=0)
    out_i, out_m = augment_batch(images, masks, cfg, torch.Generator().manual_seed(1))
    assert torch.equal((out_i[:, :1] > 0.5).float(), out_m)     # still aligned
    assert not torch.equal(out_i, images)                        # something changed
    assert torch.equal(masks.sum((1, 2, 3)), out_m.sum((1, 2, 3)))  # geometry only permutes


def test_seeded_and_identity_when_disabled():
    images, masks = _batch()
    cfg = AugmentConfig()
    a = augment_batch(images, masks, cfg, torch.Generator().manual_seed(3))
    b = augment_batch(images, masks, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    off = AugmentConfig(0, 0, 0, 0, 0, 0)
    i, m = augment_batch(images, masks, off, torch.Generator().manual_seed(3))
    assert torch.equal(i, images) and torch.equal(m, masks)


def test_colour_jitter_stays_in_range_and_leaves_masks():
    images, masks = _batch()
    cfg = AugmentConfig(0, 0, 0, brightness=0.5, contrast=0.5, saturation=0.5)
    i, m = augment_batch(images, masks, cfg, torch.Generator().manual_seed(0))
    assert i.min() >= 0 and i.max() <= 1 and torch.equal(m, masks)


def test_augments_a_batch_on_another_device_with_the_cpu_generator():
    """The training loop augments on the batch's device (a GPU); the draws stay on the CPU
    generator, so nothing may mix a CPU tensor into the batch's arithmetic. The meta device
    stands in for a GPU here: it refuses CPU operands exactly as CUDA does."""
    images, masks = _batch()
    cfg = AugmentConfig(hflip=0.5, vflip=0.5, rotate90=0.5, brightness=0.3, contrast=0.3,
                        saturation=0.3)
    gen_meta, gen_cpu = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    i, m = augment_batch(images.to("meta"), masks.to("meta"), cfg, gen_meta)
    assert i.device.type == "meta" and i.shape == images.shape and m.shape == masks.shape
    augment_batch(images, masks, cfg, gen_cpu)
    # the same draws were taken from the generator wherever the batch was
    assert torch.equal(gen_meta.get_state(), gen_cpu.get_state())
