import pytest

from htl_ray.data.split import assign_splits


def test_split_is_deterministic_and_close_to_fractions():
    ids = [f"i{k}" for k in range(1000)]
    lesions = [None] * 1000
    a = assign_splits(ids, lesions, (0.7, 0.15, 0.15), seed=3)
    assert a == assign_splits(ids, lesions, (0.7, 0.15, 0.15), seed=3)
    assert (a.count("train"), a.count("val"), a.count("test")) == (700, 150, 150)
    assert a != assign_splits(ids, lesions, (0.7, 0.15, 0.15), seed=4)
    # file order does not matter
    rev = assign_splits(ids[::-1], lesions, (0.7, 0.15, 0.15), seed=3)[::-1]
    assert rev == a


def test_images_of_one_lesion_never_cross_splits():
    ids = [f"i{k}" for k in range(300)]
    lesions = [f"L{k // 4}" if k < 200 else None for k in range(300)]   # 50 lesions × 4 images
    for seed in range(5):
        split = assign_splits(ids, lesions, (0.6, 0.2, 0.2), seed=seed)
        for lesion in {x for x in lesions if x}:
            assert len({s for s, le in zip(split, lesions, strict=True) if le == lesion}) == 1


@pytest.mark.parametrize("fr", [(0.5, 0.5), (0.5, 0.3, 0.3), (0.0, 0.0, 0.0), (1.2, -0.1, -0.1)])
def test_bad_fractions(fr):
    with pytest.raises(ValueError, match="fractions"):
        assign_splits(["a"], [None], fr)


def test_a_test_only_split_for_external_validation():
    assert assign_splits(["a", "b", "c"], [None, "L", "L"], (0, 0, 1)) == ["test"] * 3
