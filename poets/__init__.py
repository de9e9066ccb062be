"""TensorFlow for Poets: retrain the last layer of an image network.

poets/core/ holds the codelab's stages: image_listing -> modules (the network)
-> bottlenecks -> final_layer and training -> export -> labeling.
poets/extras/ holds what the codelab did not have: TensorFlow Lite, the
SavedModel, the TensorBoard graph, experiments, Beam, the ImageNet demo.
Directly in poets/: what every script shares (errors, files, settings, cli,
startup, progress, interrupts) and pipeline, one retrain.py run.
"""
