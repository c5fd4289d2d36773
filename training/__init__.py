"""AuxNet training: the model, the data, the paper's four training methods (Guo et al., Sec. 3)."""
