"""The codelab's stages, in the order a run goes through them.

image_listing (find and split the photos) and image_decoding -> modules (the
network: networks/ builds or finds it) -> bottlenecks (cached) ->
final_layer and training -> export (the frozen graph) -> labeling. The
graph's names are graph_names', for all of them.
"""
