"""A job of one GPU has no collectives and no pipeline sends: its search needs model.json alone.
This stands in for hardware.json there, with nothing measured and nothing to measure."""
import os

from megatron_galvatron.profile_format.reader import parse_model, read_json
from megatron_galvatron.profile_format.schema import COLLECTIVES, MODEL_FILE, HardwareProfile, ModelProfile

NOTE = "one GPU: no collectives or point-to-point sends to measure, so none were"


def single_gpu_hardware(model: ModelProfile, gpu_name: str = "") -> HardwareProfile:
    return HardwareProfile(path=f"(no hardware.json: {NOTE})", gpu_name=gpu_name, num_gpus=1, num_nodes=1,
                           gpus_per_node=1, collectives={op: {} for op in COLLECTIVES}, p2p={},
                           compute_slowdown=1.0, comm_slowdown=1.0)


def load_model_only(profile_dir: str):
    """(the one-GPU stand-in, model.json) of a directory holding model.json without hardware.json."""
    path = os.path.join(profile_dir, MODEL_FILE)
    raw = read_json(path, "model", "run tools/profile_model.py to measure the model")
    gpu = raw.get("hardware", {}).get("gpu_name", "") if isinstance(raw.get("hardware"), dict) else ""
    model = parse_model(raw, path)
    return single_gpu_hardware(model, gpu), model
