"""htl-ray: find hard-to-learn segmentation samples with pruned snapshots, and attend them."""

__version__ = "0.1.0"
