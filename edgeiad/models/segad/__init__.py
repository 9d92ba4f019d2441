"""SegAD: a boosted random forest over per-segment statistics of base detectors' anomaly maps (seed 003)."""
