"""Evaluation of a fine-tuned model: prediction scores (`metrics`) and multiple-choice benchmarks (`benchmarks`)."""
