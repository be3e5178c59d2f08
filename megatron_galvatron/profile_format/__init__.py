"""The profile files (hardware.json, model.json): schema, version, validation, read and write.
The profilers write through it and the search reads through it (docs/profile_format.md)."""
from megatron_galvatron.profile_format.reader import (  # noqa: F401  (the package's interface)
    check_model_matches, load_profiles, parse_hardware, parse_model, read_json)
from megatron_galvatron.profile_format.schema import (  # noqa: F401
    COLLECTIVES, HARDWARE_FILE, HARDWARE_SCHEMA, MODEL_FILE, MODEL_KEYS, MODEL_SCHEMA, REQUIRED_COLLECTIVES,
    CommFit, CommSegment, HardwareProfile, ModelProfile, ProfileError, TimeFit, bus_factor, group_key, tp_key)
from megatron_galvatron.profile_format.writer import write_hardware, write_model  # noqa: F401
