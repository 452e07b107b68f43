"""Errors that are the user's to fix (``R1kitError``: the CLI prints them as one line and exits
non-zero), and ``LearnerDiedError``, a failure ``rl.trainer.train`` recovers from. A module
with no imports: the driver catches these before it loads the heavy parts."""


class R1kitError(Exception):
    """Base of user-facing errors (bad recipe, bad data); never a bug in r1kit."""


class ConfigError(R1kitError):
    """A recipe key is unknown, mistyped or out of range."""


class DataError(R1kitError):
    """A data file is missing or one of its rows is malformed."""


class LearnerDiedError(RuntimeError):
    """A learner rank's actor died (its process killed, its node lost) during a run.
    ``rollouts``: the run's own engines, still running, for the restarted learner to use."""

    def __init__(self, message: str, rollouts: object = None) -> None:
        super().__init__(message)
        self.rollouts = rollouts
