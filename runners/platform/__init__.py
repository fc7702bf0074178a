"""Process-wide plumbing: settings, metrics, numeric thread pools, the Bento image, the BentoML patch."""
