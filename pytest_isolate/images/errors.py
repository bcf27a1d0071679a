"""Structured exceptions for base images: each carries the facts its message is made of."""

from __future__ import annotations


class ImageError(RuntimeError):
    """Base class: anything about base images that a person has to fix."""


class RecipeError(ImageError):
    """A recipe file is missing, unreadable or invalid.  ``path`` names the file (or the directory)."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"recipe {path}: {problem}")


class UnknownImageError(ImageError):
    """No recipe and no imported image has this name."""

    def __init__(self, name: str, searched: list[str], known: list[str]) -> None:
        self.name = name
        self.searched = searched
        self.known = known
        super().__init__(
            f"no image named {name!r}: no {name}.toml in {', '.join(searched) or '(no directories)'} "
            f"and no imported image of that name; known images: {', '.join(known) or 'none'}"
        )


class MissingToolError(ImageError):
    """A program the build needs is not installed."""

    def __init__(self, tool: str, advice: str) -> None:
        self.tool = tool
        self.advice = advice
        super().__init__(f"{tool} is not installed: {advice}")


class NotBuiltError(ImageError):
    """``build_if_missing=False`` and a layer is absent or damaged."""

    def __init__(self, name: str, layer: int, total: int, why: str) -> None:
        self.name = name
        self.layer = layer
        self.why = why
        super().__init__(
            f"image {name!r} is not built: layer {layer}/{total} {why}; "
            f"build it with: pytest-isolate images build {name}"
        )


class ImageBuildError(ImageError):
    """One layer's command failed.  Nothing was published for that layer.

    ``step`` is ``"base"`` or ``"step N"``; ``output_tail`` the last lines the
    command printed; ``log`` the file with its whole output.
    """

    def __init__(
        self,
        image: str,
        step: str,
        command: str,
        returncode: int,
        output_tail: list[str],
        log: str | None = None,
    ) -> None:
        self.image = image
        self.step = step
        self.command = command
        self.returncode = returncode
        self.output_tail = output_tail
        self.log = log
        status = f"exit status {returncode}" if returncode >= 0 else f"signal {-returncode}"
        headline = f"building image {image!r} failed at {step} ({status})"
        if "\n" in command.strip():
            lines = [f"{headline}:"] + [f"  $ {line}" for line in command.strip().splitlines()]
        else:
            lines = [f"{headline}: {command.strip()}"]
        if output_tail:
            lines.append(f"last {len(output_tail)} line(s) of its output:")
            lines += [f"  | {line}" for line in output_tail]
        else:
            lines.append("it printed nothing")
        if log:
            lines.append(f"full output: {log}")
        super().__init__("\n".join(lines))


class ArchiveError(ImageError):
    """An archive given to ``images import`` is unreadable, of an unknown kind, or unsafe."""

    def __init__(self, archive: str, problem: str, member: str | None = None) -> None:
        self.archive = archive
        self.problem = problem
        self.member = member
        where = f"{archive}: entry {member!r}" if member is not None else archive
        super().__init__(f"cannot import {where}: {problem}")
