"""hf_conpet: continual parameter-efficient tuning for Hugging Face models.

One LoRA module per task, stacked so that a batch whose examples belong to different tasks is
answered in one forward pass, and a learned selector that routes each example without a task id.
"""

__version__ = "0.1.0"
