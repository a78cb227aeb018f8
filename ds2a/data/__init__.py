"""Datasets, training transforms and the synthetic battery-cell generator (numpy + OpenCV, no torch)."""
from .datasets import (
    Crack500Dataset,
    FolderDataset,
    MBSDDataset,
    Sample,
    SegmentationDataset,
    detect_layout,
    open_dataset,
    split_names,
)
from .imageio import read_image, read_mask
from .synth import SynthOptions, render_cell, synth_dataset, write_dataset
from .transforms import TestTransform, TrainTransform

__all__ = [
    "Crack500Dataset", "FolderDataset", "MBSDDataset", "Sample", "SegmentationDataset",
    "detect_layout", "open_dataset", "split_names", "read_image", "read_mask",
    "render_cell", "SynthOptions", "synth_dataset", "write_dataset", "TestTransform", "TrainTransform",
]
