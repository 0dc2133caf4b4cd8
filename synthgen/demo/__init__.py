"""The offline demo and the tiny models the tests build (no downloads).

- :mod:`.data`          ``synthgen demo-data``: an object bank and backgrounds from scikit-image's
                        samples, a cat photo, the tiny models; ``synthgen demo`` runs recipes/demo.yaml
- :mod:`.tiny_render`   tiny random-weight Stable Diffusion, open_clip and u2net-style ONNX models
- :mod:`.tiny_blip2`    a tiny BLIP-2; :mod:`.tiny_flamingo` a tiny OpenFlamingo;
  :mod:`.tiny_vlms`     tiny LLaVA, SmolVLM, Qwen2.5-VL and PaliGemma 2

Each tiny model is built from its real config class with the sizes shrunk and saved as real
checkpoints are, so the product loads it by path through the same code as real weights: nothing
outside this package knows a model is tiny.
"""
