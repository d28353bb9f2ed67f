"""The loss landscape of memorisation: training in random subspaces (intrinsic dimension, Li et al. 2018),
paths between trained runs (Garipov et al. 2018) and the width of their minima per group of images."""
