import numpy as np
import pandas as pd

from htl_ray.data.schema import decode_image, decode_mask, read_manifest, read_table
from htl_ray.data.synth import generate, synthesize


def test_generation_is_seeded():
    a, b, c = generate(20, 32, seed=1), generate(20, 32, seed=1), generate(20, 32, seed=2)
    assert [r["image"] for r in a] == [r["image"] for r in b]
    assert [r["image"] for r in a] != [r["image"] for r in c]


def test_planted_flags_follow_the_rules_and_hard_groups_are_harder():
    df = pd.DataFrame(generate(600, 48, seed=0))
    rule = (df.site == "head/neck") | (df.age >= 80)
    assert (df.planted_hard == rule).all()
    assert 0.1 < df.planted_hard.mean() < 0.4
    hn = df.site == "head/neck"
    assert df[hn].area_fraction.mean() < 0.5 * df[~hn].area_fraction.mean()
    old = df.age >= 80
    assert df[old].contrast.mean() < 0.6 * df[~old & ~hn].contrast.mean()
    assert df.lesion_id.nunique() < len(df)              # some lesions have two views


def test_synthesize_writes_the_dataset_schema(tmp_path):
    synthesize(tmp_path / "s", n=40, size=32, seed=0)
    df = read_table(tmp_path / "s", columns=["id", "image", "mask", "height", "width",
                                             "split", "planted_hard", "sex"])
    assert len(df) == 40 and set(df.split) <= {"train", "val", "test"}
    img = decode_image(df.image[0], 32, 32)
    mask = decode_mask(df["mask"][0], 32, 32)
    assert img.shape == (32, 32, 3) and set(np.unique(mask)) <= {0, 1}
    assert len(read_manifest(tmp_path / "s")["fingerprint"]) == 64
