"""Training DS2A-Former: Mask2Former-style set prediction (Hungarian matching, point-sampled
mask losses, deep supervision) driven by one loop that runs single-process or under torchrun."""
