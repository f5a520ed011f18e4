"""Adaptation methods: ways of training a pretrained model further, each an objective of
the one trainer (jaxlm.training.objectives), so checkpoints, resume, microbatching and
rollback come with it unchanged. Instruction tuning (SFTObjective), alignment from
preferences (RewardObjective: a reward model from ranked preferences; DPOObjective: direct
preference optimisation against a frozen reference) and parameter-efficient methods.

Core only: nothing under jaxlm.adaptation imports TensorFlow or SeqIO; the data that feeds
these objectives (prompts masked out by decoder_loss_weights, preference batches grouped by
prompt) is made in jaxlm.data.
"""
from jaxlm.adaptation.dpo import DPOObjective, reference_scorer
from jaxlm.adaptation.grpo import GRPOAdvantages, GRPOObjective
from jaxlm.adaptation.ppo import AdaptiveKLController, FixedKLController, PPOAdvantages, PPOObjective
from jaxlm.adaptation.reward import RewardObjective, pairwise_accuracy
from jaxlm.adaptation.rewards import LMJudgeReward, RewardModelReward, RuleReward, WeightedRewards
from jaxlm.adaptation.rollouts import RolloutData, generated_prompts, jsonl_prompts
from jaxlm.adaptation.sft import SFTObjective

__all__ = ["DPOObjective", "RewardObjective", "SFTObjective", "pairwise_accuracy", "reference_scorer"]
# RL against a reward (PPO, PPO-ptx, GRPO): rollouts from the policy, rewards, objectives.
__all__ += ["PPOObjective", "PPOAdvantages", "AdaptiveKLController", "FixedKLController", "GRPOObjective",
            "GRPOAdvantages", "RolloutData", "generated_prompts", "jsonl_prompts", "RuleReward",
            "LMJudgeReward", "RewardModelReward", "WeightedRewards"]
