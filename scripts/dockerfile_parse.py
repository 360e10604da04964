"""The parts of a Dockerfile and its build context that `scripts/image_env.py` replays: stages,
ARG/ENV values, COPY, RUN, and which files `.dockerignore` lets into the context.

Only what Charter's Dockerfile uses is understood; anything else in a stage that is replayed is an
error naming the line, never silently skipped:

    df = parse(Path("Dockerfile"))
    env = df.stage_env("service-env")            # {"VENV": "/opt/venv", "EXTRAS": "...", ...}
    [run.args for run in df.chain_instructions("service-env", "RUN")]
    DockerIgnore.load(Path(".dockerignore")).excluded("services/charter/__pycache__/x.pyc")  # True
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path


class DockerfileError(Exception):
    """The Dockerfile or the build context is not what the replay can follow; says what and where."""


@dataclass(frozen=True)
class Instruction:
    keyword: str
    """Upper case: FROM, ARG, ENV, RUN, COPY, ..."""
    args: str
    """The text after the keyword, continuation lines joined."""
    line: int


@dataclass
class Stage:
    name: str
    base: str
    """The FROM image as written (may hold ${ARG} references, or name an earlier stage)."""
    line: int
    instructions: list[Instruction] = field(default_factory=list)


_VAR = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:[-+][^}]*)?\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)
_HEREDOC = re.compile(r"<<-?\s*['\"]?[A-Za-z_]")


def expand(text: str, env: Mapping[str, str], where: str) -> str:
    """Docker's variable substitution ($X, ${X}, ${X:-word}, ${X:+word}); an undefined $X is an error."""

    def sub(m: re.Match[str]) -> str:
        name = m["braced"] or m["plain"]
        value = env.get(name)
        op = m["op"]
        if op:
            word = op[2:]
            if op[1] == "-":
                return value if value else word
            return word if value else ""
        if value is None:
            raise DockerfileError(f"{where}: ${name} is not defined (declare it with ARG or ENV)")
        return value

    return _VAR.sub(sub, text)


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, instruction text) with comments dropped and continuations joined."""
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines, also inside a continuation
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        yield start, " ".join(p for p in pending if p)
        pending = []
    if pending:
        raise DockerfileError(f"line {start}: the file ends inside a continued instruction")


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str | None]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        names = ", ".join(s.name for s in self.stages)
        raise DockerfileError(f"{self.path}: no stage named {name!r} (stages: {names})")

    def where(self, item: Instruction | Stage) -> str:
        return f"{self.path.name}:{item.line}"

    def base_image(self, stage: Stage) -> str:
        """The stage's FROM expanded with the global ARGs (an image reference or a stage name)."""
        defaults = {k: v for k, v in self.global_args.items() if v is not None}
        return expand(stage.base, defaults, self.where(stage))

    def parent(self, stage: Stage) -> Stage | None:
        """The earlier stage this one is built FROM, or None for an image."""
        base = self.base_image(stage)
        earlier = self.stages[: self.stages.index(stage)]
        return next((s for s in earlier if s.name == base), None)

    def chain(self, name: str) -> list[Stage]:
        """The stage and the stages it is built FROM, the first one first."""
        stages: list[Stage] = []
        stage: Stage | None = self.stage(name)
        while stage is not None:
            stages.insert(0, stage)
            stage = self.parent(stage)
        return stages

    def root_image(self, name: str) -> str:
        return self.base_image(self.chain(name)[0])

    def chain_instructions(self, name: str, keyword: str) -> list[Instruction]:
        return [i for s in self.chain(name) for i in s.instructions if i.keyword == keyword]

    def stage_env(
        self, name: str, base_env: Mapping[str, str] | None = None, upto: Instruction | None = None
    ) -> dict[str, str]:
        """ARG and ENV values in effect in stage `name` (before `upto`, if given), build-arg defaults;
        `base_env` is the ENV of the image the stages start FROM.

        ENV is inherited from the stages it is built FROM; ARG is not (Docker's scoping): a stage
        sees a global ARG only by declaring it again."""
        env: dict[str, str] = dict(base_env or {})
        for stage in self.chain(name):
            args: dict[str, str] = {}
            for inst in stage.instructions:
                if inst is upto:
                    return {**env, **args}
                if inst.keyword == "ARG":
                    key, _, value = inst.args.partition("=")
                    key = key.strip()
                    if value:
                        args[key] = expand(_unquote(value.strip()), {**env, **args}, self.where(inst))
                    elif self.global_args.get(key) is not None:
                        args[key] = self.global_args[key]  # type: ignore[assignment]
                elif inst.keyword == "ENV":
                    for key, value in env_pairs(inst, self.where(inst)):
                        env[key] = expand(value, {**env, **args}, self.where(inst))
            if stage.name == name:
                return {**env, **args}
        raise DockerfileError(f"{self.path}: no stage named {name!r}")

    def label(self, name: str, key: str, base_env: Mapping[str, str] | None = None) -> str | None:
        """A LABEL's value in stage `name`, expanded (labels are inherited from the stages it is
        built FROM)."""
        value = None
        for stage in self.chain(name):
            for inst in stage.instructions:
                if inst.keyword == "LABEL":
                    for k, v in env_pairs(inst, self.where(inst)):
                        if k == key:
                            env = self.stage_env(stage.name, base_env, upto=inst)
                            value = expand(v, env, self.where(inst))
        return value

    def exec_form(self, name: str, keyword: str) -> list[str] | None:
        """The last ENTRYPOINT/CMD of stage `name` (or the stages it is built FROM), as a JSON array."""
        found = self.chain_instructions(name, keyword)
        if not found:
            return None
        inst = found[-1]
        return _json_array(inst.args, self.where(inst))

    def healthcheck(self, name: str) -> list[str] | None:
        """The HEALTHCHECK command of stage `name` in exec form, None if it has none."""
        found = self.chain_instructions(name, "HEALTHCHECK")
        if not found or found[-1].args.strip().upper() == "NONE":
            return None
        inst = found[-1]
        _, sep, command = inst.args.partition("CMD ")
        if not sep:
            raise DockerfileError(f"{self.where(inst)}: HEALTHCHECK without CMD")
        return _json_array(command, self.where(inst))


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _json_array(text: str, where: str) -> list[str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise DockerfileError(f"{where}: use the exec (JSON array) form: {text!r}") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DockerfileError(f"{where}: expected a JSON array of strings: {text!r}")
    return value


def env_pairs(inst: Instruction, where: str) -> list[tuple[str, str]]:
    """ENV/LABEL key=value pairs (the legacy `ENV key value` form too); values are not expanded."""
    words = shlex.split(inst.args, posix=True)
    if words and "=" not in words[0]:
        if inst.keyword == "ENV" and len(words) >= 2:
            return [(words[0], " ".join(words[1:]))]
        raise DockerfileError(f"{where}: cannot read {inst.keyword} {inst.args!r}")
    pairs = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise DockerfileError(f"{where}: {inst.keyword} item {word!r} is not key=value")
        pairs.append((key, value))
    return pairs


@dataclass(frozen=True)
class Copy:
    sources: list[str]
    dest: str
    from_stage: str | None


def copy_args(inst: Instruction, env: Mapping[str, str], where: str) -> Copy:
    """A COPY's sources, destination and --from, variables expanded."""
    text = inst.args.strip()
    flags: dict[str, str] = {}
    while text.startswith("--"):
        flag, _, text = text.partition(" ")
        key, _, value = flag[2:].partition("=")
        flags[key] = value
        text = text.strip()
    unsupported = set(flags) - {"from", "link"}
    if unsupported:
        raise DockerfileError(f"{where}: COPY --{sorted(unsupported)[0]} is not supported by the replay")
    words = _json_array(text, where) if text.startswith("[") else shlex.split(text)
    words = [expand(w, env, where) for w in words]
    if len(words) < 2:
        raise DockerfileError(f"{where}: COPY needs a source and a destination")
    for source in words[:-1]:
        if any(c in source for c in "*?["):
            raise DockerfileError(f"{where}: COPY wildcards are not supported by the replay: {source!r}")
    return Copy(words[:-1], words[-1], flags.get("from"))


def run_text(inst: Instruction, where: str) -> str:
    """A RUN's shell command, its --mount/--network options dropped."""
    text = inst.args.strip()
    while text.startswith("--"):
        flag, _, text = text.partition(" ")
        if not flag.startswith(("--mount=", "--network=")):
            raise DockerfileError(f"{where}: RUN {flag.split('=')[0]} is not supported by the replay")
        text = text.strip()
    if text.startswith("["):
        raise DockerfileError(f"{where}: the replay runs RUN in shell form only")
    return text


def parse(path: Path) -> Dockerfile:
    text = path.read_text(encoding="utf-8")
    global_args: dict[str, str | None] = {}
    stages: list[Stage] = []
    for line, instruction in _logical_lines(text):
        keyword, _, args = instruction.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword in ("RUN", "COPY") and _HEREDOC.search(args):
            raise DockerfileError(f"{path.name}:{line}: heredocs are not supported by the replay")
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--platform")]
            if len(words) == 3 and words[1].upper() == "AS":
                name = words[2]
            elif len(words) == 1:
                name = str(len(stages))
            else:
                raise DockerfileError(f"{path.name}:{line}: cannot read FROM {args!r}")
            stages.append(Stage(name=name, base=words[0], line=line))
            continue
        if not stages:
            if keyword != "ARG":
                raise DockerfileError(f"{path.name}:{line}: only ARG may come before the first FROM")
            key, sep, value = args.partition("=")
            global_args[key.strip()] = _unquote(value.strip()) if sep else None
            continue
        stages[-1].instructions.append(Instruction(keyword, args, line))
    if not stages:
        raise DockerfileError(f"{path}: no FROM instruction")
    return Dockerfile(path, global_args, stages)


# --- .dockerignore ---------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker (moby/patternmatcher) compiles it."""
    out = "^"
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern[i + 1 : i + 2] == "*":
                i += 1
                if pattern[i + 1 : i + 2] == "/":
                    i += 1
                out += ".*" if i + 1 >= len(pattern) else "(.*/)?"
            else:
                out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        elif ch in ".+()|{}$^":
            out += "\\" + ch
        else:
            out += ch
        i += 1
    return re.compile(out + "$")


@dataclass(frozen=True)
class DockerIgnore:
    rules: tuple[tuple[bool, str, re.Pattern[str]], ...]
    """(re-include?, cleaned pattern, regex), in file order: the last rule that matches decides."""

    @classmethod
    def load(cls, path: Path) -> DockerIgnore:
        if not path.exists():
            return cls(())
        return cls.parse(path.read_text(encoding="utf-8"))

    @classmethod
    def parse(cls, text: str) -> DockerIgnore:
        rules = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            line = line[1:].strip() if negate else line
            cleaned = posixpath.normpath(line).lstrip("/")
            if cleaned in ("", "."):
                continue
            rules.append((negate, cleaned, _pattern_regex(cleaned)))
        return cls(tuple(rules))

    def excluded(self, rel: str) -> bool:
        """Whether the context path `rel` (posix, relative) is left out: a rule matches a path when it
        matches the path or one of its parent folders."""
        parts = rel.split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for negate, _, regex in self.rules:
            if any(regex.match(c) for c in candidates):
                result = not negate
        return result

    def may_hold_included(self, rel_dir: str) -> bool:
        """Whether an excluded folder may still hold a re-included path (so it must be walked)."""
        return any(
            negate and (p == rel_dir or p.startswith(rel_dir + "/") or p.startswith("*"))
            for negate, p, _ in self.rules
        )


def context_files(root: Path, ignore: DockerIgnore, under: str = "") -> list[str]:
    """The files of the build context at or below `under` (posix paths relative to `root`), as
    Docker sends them. Excluded folders are not walked unless a rule may re-include something in them."""
    start = root / under if under else root
    if start.is_file():
        return [] if ignore.excluded(under) else [under]
    found: list[str] = []
    for folder, dirs, files in os.walk(start):
        rel_dir = Path(folder).relative_to(root).as_posix()

        def rel(name: str, rel_dir: str = rel_dir) -> str:
            return name if rel_dir == "." else f"{rel_dir}/{name}"

        dirs[:] = sorted(d for d in dirs if not ignore.excluded(rel(d)) or ignore.may_hold_included(rel(d)))
        found.extend(rel(f) for f in files if not ignore.excluded(rel(f)))
    return sorted(found)
