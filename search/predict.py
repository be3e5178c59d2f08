"""Price any plan (searched or hand-written) with the cost model and measured profiles."""
from megatron_galvatron.profile_format import check_model_matches, load_profiles
from search.comm import Network
from search.cost_model import CostModel, Prediction
from search.model_config import ModelConfig


def search_config(gpt_config) -> ModelConfig:
    """The search's view of the runtime's GPTConfig (or anything with the same fields)."""
    return ModelConfig(family=gpt_config.family, num_layers=gpt_config.num_layers,
                       hidden_size=gpt_config.hidden_size, num_attention_heads=gpt_config.num_attention_heads,
                       num_query_groups=gpt_config.num_query_groups, ffn_hidden_size=gpt_config.ffn_hidden_size,
                       vocab_size=gpt_config.vocab_size, seq_length=gpt_config.seq_length).check()


def predict(plan, gpt_config, profiles) -> Prediction:
    """gpt_config: the runtime's GPTConfig (or anything with the same fields); profiles: a
    profile directory, or its (hardware, model) profiles already loaded for pricing many plans."""
    cfg = search_config(gpt_config)
    hw, model_profile = load_profiles(profiles) if isinstance(profiles, str) else profiles
    check_model_matches(model_profile, cfg.to_dict())
    cost = CostModel(cfg, model_profile, Network(hw, plan.world_size, min(hw.gpus_per_node, plan.world_size)))
    return cost.evaluate(plan)
