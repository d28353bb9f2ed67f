"""How much of the network is needed to store the mislabels: pruning masks and pruned models (lottery
tickets, Frankle and Carbin 2019; open_lth)."""
