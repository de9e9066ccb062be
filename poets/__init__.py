"""TensorFlow for Poets: retrain the last layer of an image network.

The pipeline, one module per stage:
images (find, split, decode) -> modules (resolve and load a feature extractor)
-> bottlenecks (compute and cache) -> training (the new layer) -> export
(frozen graph, labels, SavedModel) -> labeling.
"""
