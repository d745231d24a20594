"""Converts MTCNN's weights from the facenet-pytorch wheel to safetensors.

The wheel ships the three networks of MTCNN (P-Net, R-Net, O-Net) as
PyTorch state dicts. Glowline runs them through tch, which reads
safetensors, so setup converts them once with the torch already in .venv.
The package is only read, never imported: its __init__ would pull in
torchvision, which Glowline does not install.

Usage: python scripts/convert_mtcnn.py OUT.safetensors
"""

import array
import importlib.util
import json
import os
import struct
import sys
import warnings

# torch warns at import when numpy is missing; nothing here needs numpy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402

NETWORKS = ("pnet", "rnet", "onet")


def package_data_dir():
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("convert_mtcnn: facenet-pytorch is not installed in this Python")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def collect_tensors(data_dir):
    """Every tensor as float32, named NETWORK.LAYER.PARAM, in a stable order."""
    tensors = {}
    for net in NETWORKS:
        state = torch.load(os.path.join(data_dir, f"{net}.pt"), map_location="cpu", weights_only=True)
        for name in sorted(state):
            tensors[f"{net}.{name}"] = state[name].detach().to(torch.float32).contiguous()
    return tensors


def write_safetensors(tensors, path):
    """The safetensors layout: a little-endian u64 header length, a JSON
    header of names, shapes and byte ranges, then the raw data."""
    header, blobs, offset = {}, [], 0
    for name, tensor in tensors.items():
        blob = array.array("f", tensor.flatten().tolist())
        if sys.byteorder != "little":
            blob.byteswap()
        data = blob.tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"source": "facenet-pytorch MTCNN (pnet.pt, rnet.pt, onet.pt)"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for data in blobs:
            f.write(data)
    os.replace(tmp, path)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    out = sys.argv[1]
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    tensors = collect_tensors(package_data_dir())
    write_safetensors(tensors, out)
    count = sum(t.numel() for t in tensors.values())
    print(f"convert_mtcnn: wrote {len(tensors)} tensors ({count} weights) to {out}")


if __name__ == "__main__":
    main()
