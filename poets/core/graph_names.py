"""The retrained graph's names and conventions, shared by training, export,
labeling and TensorFlow Lite.

Plain constants (no TensorFlow), so the flags and settings can check a name
without loading it. The layer's names follow the original retrain.py: the
codelab's (`input/BottleneckInputPlaceholder`, `input/GroundTruthInput`,
`final_result`, `cross_entropy`, `accuracy`), except the layer's scope, which
is TF Hub's retrain.py's `final_retrain_ops` (the codelab's was
`final_training_ops`). The exported graph's input is always `Placeholder`,
float32 [None, height, width, 3] in [0, 1], as in TF Hub's retrain.py.
"""

# The name scope a loaded graph's ops get (import/Placeholder); layer flags
# may give it or not.
IMPORT_PREFIX = 'import'

# The exported graph's input: resized RGB pixels in [0, 1].
INPUT_NAME = 'Placeholder'
# label_image.py's --input_mean/--input_std that turn 0..255 pixels into
# that range.
INPUT_MEAN = 0.0
INPUT_STD = 255.0

# The trained layer: its scope (which holds its variables), its inputs'
# scope and names, and the default name of its softmax output.
LAYER_SCOPE = 'final_retrain_ops'
INPUT_SCOPE = 'input'
BOTTLENECK_INPUT = 'BottleneckInputPlaceholder'
GROUND_TRUTH_INPUT = 'GroundTruthInput'
FINAL_TENSOR_NAME = 'final_result'

# With --fine_tune_blocks: the scopes of the network's frozen bottom and of
# its trained top, and the top's input (in INPUT_SCOPE), the cached cut.
FROZEN_SCOPE = 'frozen_blocks'
FINE_TUNED_SCOPE = 'fine_tuned_blocks'
CUT_INPUT = 'CutInputPlaceholder'

# Top-level names the retrained graph already uses: a softmax given one of
# them would silently become `<name>_1` and export would look for the wrong
# tensor.
TAKEN_NAMES = (INPUT_SCOPE, LAYER_SCOPE, 'cross_entropy', 'train',
               'accuracy', INPUT_NAME, 'init', 'save', FROZEN_SCOPE,
               FINE_TUNED_SCOPE)

# Images per session run when making bottlenecks, evaluating or labeling:
# large enough to amortise the call, small enough that memory does not grow
# with the folder.
BATCH_SIZE = 32
