"""Which training images are mislabelled: per-image scores (from the probe, training dynamics, confident
learning on K-fold out-of-sample probabilities, memorisation) and how well they find injected mislabels."""
