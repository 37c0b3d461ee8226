"""Evaluating generative models: the FID Inception network (FID, Inception Score), Fréchet
distances with a pluggable feature network, and the conditional accuracy of samples."""
