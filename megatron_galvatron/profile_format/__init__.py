"""The profile files (hardware.json, model.json): schema, version, validation, read and write.
The profilers write through it and the search reads through it (docs/profile_format.md)."""
from megatron_galvatron.profile_format.reader import (
    check_model_matches,
    load_profiles,
    parse_hardware,
    parse_model,
    read_json,
)
from megatron_galvatron.profile_format.schema import (
    COLLECTIVES,
    HARDWARE_FILE,
    HARDWARE_SCHEMA,
    MODEL_FILE,
    MODEL_KEYS,
    MODEL_SCHEMA,
    REQUIRED_COLLECTIVES,
    CommFit,
    CommSegment,
    HardwareProfile,
    ModelProfile,
    ProfileError,
    TimeFit,
    bus_factor,
    group_key,
    tp_key,
)
from megatron_galvatron.profile_format.writer import write_hardware, write_model

__all__ = ["COLLECTIVES", "HARDWARE_FILE", "HARDWARE_SCHEMA", "MODEL_FILE", "MODEL_KEYS", "MODEL_SCHEMA",
           "REQUIRED_COLLECTIVES", "CommFit", "CommSegment", "HardwareProfile", "ModelProfile", "ProfileError",
           "TimeFit", "bus_factor", "check_model_matches", "group_key", "load_profiles", "parse_hardware",
           "parse_model", "read_json", "tp_key", "write_hardware", "write_model"]
