"""Data: mask synthesis, training sets, landmark caches, test clips, packing for the GPU."""
