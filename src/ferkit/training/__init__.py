"""Layer 3: the training loop, its run state, optimizer and schedules, distillation targets."""
