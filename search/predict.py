"""Price any plan (searched or hand-written) with the cost model and measured profiles."""
from megatron_galvatron.model.config import GPTConfig
from megatron_galvatron.profile_format import check_model_matches, load_profiles
from search.comm import Network
from search.cost_model import CostModel, Prediction


def predict(plan, cfg: GPTConfig, profiles) -> Prediction:
    """profiles: a profile directory, or its (hardware, model) profiles already loaded for
    pricing many plans."""
    hw, model_profile = load_profiles(profiles) if isinstance(profiles, str) else profiles
    model_profile = model_profile.for_seq_length(cfg.seq_length)[0]  # from its sequence fits, where it has them
    check_model_matches(model_profile, cfg.to_dict())
    cost = CostModel(cfg, model_profile, Network(hw, plan.world_size, min(hw.gpus_per_node, plan.world_size)))
    return cost.evaluate(plan)
