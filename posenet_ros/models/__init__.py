"""torch nn.Modules only: backbones, PoseNet heads, temporal LSTM, RGB-D stream, scene-coordinate network.

No file or message I/O here, except `backbones.load_pretrained`, which reads a local safetensors file.
"""
