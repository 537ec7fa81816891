// optim.h: the trainer's optimizer arithmetic, exactly as PyTorch does it: AdamW
// (torch.optim.AdamW), dynamic loss scaling (torch.amp.GradScaler), gradient-norm clipping
// (torch.nn.utils.clip_grad_norm_) and the learning-rate schedules of diffusers' get_scheduler.
// (Being written: see issue 6.)
#pragma once
