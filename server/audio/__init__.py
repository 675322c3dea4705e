"""Audio: decoding, resampling, segmentation."""
