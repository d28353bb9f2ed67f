"""`overparam memorisation`: Feldman and Zhang's memorisation at scale, against the perturbation probe."""
