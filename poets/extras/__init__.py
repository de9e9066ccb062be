"""What the codelab did not have, built on the core stages: TensorFlow Lite,
the SavedModel, the TensorBoard graph, experiments, Beam, the ImageNet demo,
evaluation."""
