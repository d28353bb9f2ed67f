"""Simplicity bias on the Boolean cube (issue 16): the prior P(f) of a small network's parameter-function
map, SGD against that prior, and whether label noise is stored as a lookup table of exceptions."""
