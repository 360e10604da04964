"""The trainer: SFT, reward model, DPO, PPO and GRPO/RLOO on Charter's data (docs/trainer.md)."""
