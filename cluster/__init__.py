"""Launching DeepLens: the local stack (`deeplens up`) and cluster bootstrap."""
