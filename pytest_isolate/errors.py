"""Structured exceptions: each carries the facts a message is made of."""

from __future__ import annotations


class SpecError(ValueError):
    """A marker argument, ini option or command-line option has a bad value.

    ``origin`` is ``"marker"``, ``"cli"`` or ``"ini"``; ``where`` names the
    test for marker values and for defaults that a test resolved.
    """

    def __init__(
        self,
        origin: str,
        argument: str,
        value: object,
        expected: str,
        *,
        where: str | None = None,
        unknown: bool = False,
        accepted: tuple[str, ...] = (),  # with unknown: the arguments there are
    ) -> None:
        self.origin = origin
        self.argument = argument
        self.value = value
        self.expected = expected
        self.where = where
        self.unknown = unknown
        self.accepted = accepted
        super().__init__(self._message())

    def _message(self) -> str:
        if self.unknown:
            return (
                f"{self.where}: @isolated got an unknown argument {self.argument}={self.value!r}; "
                f"the accepted arguments are {', '.join(self.accepted)}"
            )
        if self.origin == "marker":
            written = f"@isolated({self.argument}={self.value!r})"
        elif self.origin == "cli":
            written = f"--isolate-{self.argument.replace('_', '-')}={self.value}"
        else:
            written = f"ini option isolate_{self.argument} = {self.value}"
        prefix = f"{self.where}: " if self.where and self.origin == "marker" else ""
        return f"{prefix}{written} is invalid: expected {self.expected}"


class ContainerError(RuntimeError):
    """The container machinery failed for one test; ``advice`` says what to do."""

    def __init__(self, stage: str, reason: str, advice: str = "") -> None:
        self.stage = stage
        self.reason = reason
        self.advice = advice
        text = f"pytest-isolate could not {stage}: {reason}"
        super().__init__(f"{text}\n{advice}" if advice else text)
