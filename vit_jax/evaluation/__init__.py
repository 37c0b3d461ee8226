"""Evaluating generative models: Fréchet distances between feature statistics, with a
pluggable feature network, and the conditional accuracy of class-conditional samples."""
