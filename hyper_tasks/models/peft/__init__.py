"""PEFT methods, one module each. Each is a small pure function applied at a hook point
of the backbone to a slot dict of an :class:`~hyper_tasks.models.adaptation.Adaptation`
(generated per task / per example, or learned under ``peft/`` by :mod:`.static`).
An all-zero slot is always the identity."""
