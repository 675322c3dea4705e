"""Audio: ``errors`` (what is refused, AudioLimits), ``pcm`` (samples to the model's input), ``store`` (long
recordings), ``decode`` (encoded files), ``segmenter`` (live streams)."""
