"""The quickstart job: the lifecycle of a small model on the embedded data, offline, in one
command, ending in one report.

    make quickstart        # = python -m jaxlm.main --gin_file=gin_configs/runs/quickstart.gin

Stages (gin_configs/runs/quickstart.gin configures every one); each training stage is a
train() run in its own directory, started from the previous stage's checkpoint, skipped
("cached") once its last checkpoint exists, resumed at its step when it was stopped
(Ctrl-C checkpoints and stops; the same command resumes) and refused, with the settings
that changed, when the same directory is asked for it with other settings:
  1. clean the sources (default: the embedded prose and code corpora) and print what each
     cleaning stage removed; add generated reasoning documents (corpus.py);
  2. train a SentencePiece tokenizer on the training split, chat role markers reserved;
  3. pretrain the small decoder in MODEL_DIR (progress bar, TensorBoard, checkpoints);
  4. instruction-tune it in MODEL_DIR/sft (LoRA: sft_lora): generated instruction families
     (one also as chat turns) and the tasks that teach prompting (lookup with
     demonstrations, calculator calls, rationales); full or LoRA (quickstart.sft_method)
     (stages.py);
  5. align it in MODEL_DIR/dpo (ppo, grpo; after LoRA: dpo_lora, ...): DPO on generated
     preferences with a known true reward (PPO or GRPO: quickstart.alignment) (stages.py);
  6. evaluate every stage (untrained, pretrained, instruction-tuned, aligned) with one suite:
     held-out perplexity, exact match on held-out instructions, ECE, preference accuracy
     and true reward, and the prompting strategies on held-out problems: few-shot with
     random vs k-NN demonstrations, CoT greedy vs self-consistency, no tool vs the
     calculator (suite.py; cached in MODEL_DIR/evals);
  7. write MODEL_DIR/report.md (job.py): a row per stage with standard errors, the changes
     each stage made (gains under 2 standard errors marked "within noise"), the minutes
     each stage took, metrics.png (a panel per metric, stages side by side), loss_curve.png
     (a line per stage) and each stage's samples for the same prompts.
The tokenizer is also MODEL_DIR/vocabulary.model (the README's sft / dpo / eval commands
use it with the checkpoints).
"""
from jaxlm.quickstart.corpus import held_out_perplexity, loss_curve, register_quickstart_mixture
from jaxlm.quickstart.job import quickstart

__all__ = ["held_out_perplexity", "loss_curve", "quickstart", "register_quickstart_mixture"]
