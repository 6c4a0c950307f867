"""A user objective (`tests.nan_objective:nan_when_poisoned`) whose loss is NaN once a test sets POISONED,
e.g. after the run's first checkpoint: the steps before it train normally, every later one trips the NaN
guard."""

POISONED = {"on": False}


def nan_when_poisoned(logp, mask, adv, behavior_logp):
    loss = -adv[:, None] * logp * mask.to(logp.dtype)
    return (loss * float("nan") if POISONED["on"] else loss), {}
