"""ALiBi causal language model for Hugging Face Transformers.

Importing this package registers `AlibiConfig` with `AutoConfig` and the models with `AutoModel` and
`AutoModelForCausalLM`, so `from_pretrained` works on saved folders without `trust_remote_code`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_alibi import AlibiConfig
from .modeling_alibi import AlibiForCausalLM, AlibiModel, AlibiPreTrainedModel, alibi_bias, alibi_slopes

# No exist_ok: a clash with a future built-in "alibi" model type must fail loudly rather than shadow it.
# Registering the same classes twice (re-import) is allowed by transformers.
AutoConfig.register(AlibiConfig.model_type, AlibiConfig)
AutoModel.register(AlibiConfig, AlibiModel)
AutoModelForCausalLM.register(AlibiConfig, AlibiForCausalLM)

# Every save_pretrained / push_to_hub then writes `auto_map` and copies modeling_alibi.py with the files it
# imports (configuration, attention, adaptive and the two Triton kernel files), so the folder also loads with
# trust_remote_code=True where this package is not installed.
AlibiConfig.register_for_auto_class()
AlibiModel.register_for_auto_class("AutoModel")
AlibiForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__version__ = "0.1.0"

__all__ = [
    "AlibiConfig",
    "AlibiForCausalLM",
    "AlibiModel",
    "AlibiPreTrainedModel",
    "alibi_bias",
    "alibi_slopes",
]
